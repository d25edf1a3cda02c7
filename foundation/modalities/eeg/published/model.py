"""Published EEG encoders as suite models: a braindecode model inside, plus the input contract it was trained under.

``labram``, ``cbramod``, ``eegpt``, ``biot`` and ``bendr`` are registered models (``foundation.registry``):
each is :class:`PublishedEEG` with its architecture fixed. The braindecode model sits in ``net`` (its
classification head replaced by ``nn.Identity``: the fine-tune's :class:`~foundation.finetune.task_model.TaskModel`
brings its own). ``forward_features(x [B, C, T])`` returns tokens ``[B, N, D]`` (LaBraM, CBraMod, EEGPT) or
pooled features ``[B, D]`` (BIOT, BENDR). ``save_pretrained`` / ``from_pretrained`` write the suite's folder
(``config.json`` holds the architecture, sizes and the whole input contract).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.hub.mixin import HubMixin
from foundation.modalities.eeg.published.archs import arch_spec, build_net

__all__ = ["PublishedEEGConfig", "PublishedEEG", "LaBraM", "CBraMod", "EEGPT", "BIOT", "BENDR", "MISSING_CHANNELS"]

MISSING_CHANNELS = ("interpolate", "mask")


@dataclass
class PublishedEEGConfig:
    """Architecture sizes and the input contract of one published EEG checkpoint."""

    n_times: int = field(default=800, metadata={"help": "samples per window (a multiple of the patch length)"})
    sfreq: float = field(default=0.0, metadata={"help": "sampling rate in Hz the checkpoint expects (0: the "
                                                        "architecture's)"})
    channels: tuple[str, ...] = field(default=(), metadata={"help": "input channels in order, the checkpoint's "
                                                                    "channel table (empty: the architecture's default)"})
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "braindecode constructor sizes "
                                                                         "(embed_dim, num_layers, ...)"})
    scale: float = field(default=0.0, metadata={"help": "volts -> model units (0: the architecture's)"})
    normalize: str = field(default="", metadata={"help": "none | quantile95 | minmax-scale ('': the architecture's)"})
    missing_channels: str = field(default="interpolate", metadata={
        "help": "channels of the table a recording lacks: 'interpolate' (MNE spherical splines from the electrode "
                "positions) or 'mask' (zeros)"})
    init: str = field(default="random init", metadata={"help": "where the weights came from: 'random init' or the "
                                                               "checkpoint read"})


def _fill(config: PublishedEEGConfig, arch: str) -> None:
    spec = arch_spec(arch)
    config.channels = tuple(str(c).upper() for c in (config.channels or spec.channels))
    config.sfreq = float(config.sfreq or spec.sfreq)
    config.scale = float(config.scale or spec.scale)
    config.normalize = config.normalize or spec.normalize
    config.kwargs = dict(config.kwargs)
    if config.missing_channels not in MISSING_CHANNELS:
        raise ConfigError(f"missing_channels {config.missing_channels!r}: valid: {', '.join(MISSING_CHANNELS)}")
    if config.n_times < 1 or config.n_times % spec.patch:
        raise ConfigError(f"{arch}: n_times={config.n_times} must be a positive multiple of its patch length "
                          f"{spec.patch} samples ({spec.patch / spec.sfreq:g} s); change data.window_seconds")
    table = {n.upper() for n in spec.table}
    unknown = [c for c in config.channels if table and c not in table]
    if unknown:
        raise ConfigError(f"{arch}: channel(s) {unknown} are not in the checkpoint's channel table; use names of the "
                          f"table ({', '.join(sorted(table)[:12])} ...)")


class PublishedEEG(nn.Module, HubMixin, tags=["eeg", "braindecode"]):
    """A braindecode architecture in the suite's encoder interface (see the module docstring).

    Args:
        config: sizes and contract; empty contract fields take the architecture's defaults.

    Raises:
        ConfigError: a window that is no multiple of the patch, a channel outside the table.
    """

    arch: ClassVar[str] = ""
    config_class = PublishedEEGConfig

    def __init__(self, config: PublishedEEGConfig) -> None:
        super().__init__()
        _fill(config, self.arch)
        self.config = config
        self.spec = arch_spec(self.arch)
        self.net = build_net(self.arch, self.n_chans, config.n_times, config.sfreq, config.channels, config.kwargs)
        if config.kwargs.get("encoder_only"):
            self.net.contextualizer = nn.Identity()  # BENDR without its contextualizer: 4-chunk pooling
        self.register_buffer("input_chans", self._input_chans(), persistent=False)
        with torch.no_grad():
            probe = self.forward_features(torch.zeros(1, self.n_chans, config.n_times))
        self.embed_dim = int(probe.shape[-1])

    @property
    def n_chans(self) -> int:
        """C, the input channels (BENDR: 19 + its relative-amplitude channel)."""
        return len(self.config.channels)

    def _input_chans(self) -> torch.Tensor:
        """LaBraM's position-embedding rows: 0 (CLS) then 1 + table index of each input channel."""
        if self.arch != "labram":
            return torch.zeros(0, dtype=torch.long)
        table = [n.upper() for n in self.spec.table]
        return torch.tensor([0] + [table.index(c) + 1 for c in self.config.channels], dtype=torch.long)

    def block_stack(self) -> str:
        """Path of the block stack (layer-wise LR decay), relative to this module."""
        return f"net.{self.spec.blocks}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encode windows in the contract's channels and units.

        Args:
            x: ``[B, C, T]`` with C = ``len(config.channels)``, T = ``config.n_times``.

        Returns:
            ``[B, N, D]`` tokens (LaBraM, CBraMod, EEGPT) or ``[B, D]`` (BIOT, BENDR).

        Raises:
            DataError: another input shape (names the expected one and how the contract makes it).
        """
        want = (self.n_chans, self.config.n_times)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise DataError(f"{self.arch}: input of shape {tuple(x.shape)}, expected [B, {want[0]}, {want[1]}] "
                            f"({', '.join(self.config.channels[:6])} ... at {self.config.sfreq:g} Hz); fine-tune through "
                            "`foundation finetune`, which applies the checkpoint's input contract to the recordings")
        return self.spec.features(self.net, x, self.input_chans)

    def load_braindecode_state(self, state: dict[str, torch.Tensor], report: Any, exclude: tuple[str, ...] = ()) -> None:
        """Load ``state`` (braindecode key names) into ``net`` strictly, completing ``report``.

        Keys the model computes itself (EEGPT's ``chans_id``) are taken from the model and listed as derived;
        LaBraM's temporal embedding keeps the rows the window uses. Keys in ``exclude`` (exact or prefix) are left
        out on both sides.

        Raises:
            CheckpointError: missing or unexpected keys, or a shape that does not fit.
        """
        from foundation.errors import CheckpointError

        own = self.net.state_dict()
        state = dict(state)
        for key in [k for k in own if k == "chans_id" and k not in state]:
            state[key] = own[key]
            report.derived.append(key)
        te = "temporal_embedding"
        if self.arch == "labram" and te in state and state[te].shape[1] > own[te].shape[1]:
            state[te] = state[te][:, :own[te].shape[1]]
            report.renamed.setdefault(te, te)
        elif self.arch == "labram" and te in state and state[te].shape[1] < own[te].shape[1]:
            raise CheckpointError(f"{report.source}: LaBraM's time embedding has {state[te].shape[1]} rows, the window "
                                  f"of {self.config.n_times} samples needs {own[te].shape[1]}; use shorter windows")

        def left_out(k: str) -> bool:
            return any(k == e or k.startswith(e.rstrip(".") + ".") for e in exclude)

        report.excluded = sorted({k for k in [*state, *own] if left_out(k)})
        report.missing = [k for k in own if k not in state and not left_out(k)]
        report.unexpected = [k for k in state if k not in own and not left_out(k)]
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
               if k in own and v.shape != own[k].shape]
        if bad:
            raise CheckpointError(f"{report.source}: {len(bad)} tensor(s) do not fit the {self.arch} built from it: "
                                  f"{bad[:4]}; name the size with --arch-set (e.g. num_heads=...) or check --arch")
        report.check()
        keep = {k: v for k, v in state.items() if k in own and not left_out(k)}
        result = self.net.load_state_dict(keep, strict=False)
        report.loaded = len(keep)
        if result.missing_keys and not exclude:
            raise CheckpointError(f"{report.source}: missing after load: {result.missing_keys[:8]}")


class LaBraM(PublishedEEG):
    arch = "labram"
    model_name = "labram"


class CBraMod(PublishedEEG):
    arch = "cbramod"
    model_name = "cbramod"


class EEGPT(PublishedEEG):
    arch = "eegpt"
    model_name = "eegpt"


class BIOT(PublishedEEG):
    arch = "biot"
    model_name = "biot"


class BENDR(PublishedEEG):
    arch = "bendr"
    model_name = "bendr"
