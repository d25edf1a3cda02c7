"""The five published EEG architectures, as braindecode builds them, and what each checkpoint expects as input.

Architectures (braindecode >= 1.8 classes; the suite never re-implements them):

- LaBraM, Jiang et al., "Large Brain Model for Learning Generic Representations with Tremendous EEG Data in BCI",
  ICLR 2024, https://arxiv.org/abs/2405.18765 (``braindecode.models.Labram``);
- CBraMod, Wang et al., "CBraMod: A Criss-Cross Brain Foundation Model for EEG Decoding", ICLR 2025,
  https://arxiv.org/abs/2412.07236 (``CBraMod``);
- EEGPT, Wang et al., "EEGPT: Pretrained Transformer for Universal and Reliable Representation of EEG Signals",
  NeurIPS 2024 (``EEGPT``);
- BIOT, Yang et al., "BIOT: Biosignal Transformer for Cross-data Learning in the Wild", NeurIPS 2023,
  https://arxiv.org/abs/2305.10351 (``BIOT``);
- BENDR, Kostas et al., "BENDR: using transformers and a contrastive self-supervised learning task to learn from
  massive amounts of EEG data", Front. Hum. Neurosci. 2021, https://arxiv.org/abs/2101.12037 (``BENDR``).

Input contracts (from the official preprocessing code):

====== ======= ============ ================================= ==================================================
arch   rate Hz patch        units                             channels
====== ======= ============ ================================= ==================================================
labram 200     200 (1 s)    0.1 mV (volts x 1e4)              any of LaBraM's 128-name table (position embedding)
cbramod 200    200 (1 s)    0.1 mV (volts x 1e4)              any (criss-cross attention); 10-20 by default
eegpt  256     64           mV (volts x 1e3)                  any of EEGPT's 62-name table (channel embedding)
biot   200     STFT 200/100 per channel / 95th pct of abs     16 or 18 bipolar TCP derivations (``FP1-F7`` ...)
bendr  256     -            min-max to [-1, 1] per trial      19 of 10-20 + a relative-amplitude channel
====== ======= ============ ================================= ==================================================
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ArchSpec", "ARCHS", "STANDARD_1020", "arch_spec", "build_net", "channel_table"]

STANDARD_1020 = ("FP1", "FP2", "F7", "F3", "FZ", "F4", "F8", "T7", "C3", "CZ", "C4", "T8", "P7", "P3", "PZ", "P4",
                 "P8", "O1", "O2")


def _labram_features(net: nn.Module, x: torch.Tensor, input_chans: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> patch tokens ``[B, C * T / patch, D]`` (LaBraM's position embedding picked by channel)."""
    return net.forward_features(x, input_chans=input_chans, return_all_tokens=True)[:, 1:]


def _cbramod_features(net: nn.Module, x: torch.Tensor, input_chans: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> encoder tokens ``[B, C * T / patch, D]``; ``proj_out`` is the pretraining head (the
    official fine-tuning sets it to identity)."""
    feats = net.encoder(net.patch_embedding(net.rearrange(x)))  # [B, C, N, D]
    return feats.flatten(1, 2)


def _eegpt_features(net: nn.Module, x: torch.Tensor, input_chans: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> summary tokens ``[B, N * embed_num, D]`` of the target encoder."""
    return net.target_encoder(x, net.chans_id).flatten(1, 2)


def _pooled_features(net: nn.Module, x: torch.Tensor, input_chans: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> ``[B, D]`` (BIOT's encoder embedding; BENDR's start token or 4-chunk pooling)."""
    return net(x, return_features=True)["features"]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: braindecode class, input contract defaults, where its blocks and adapter targets are.

    Attributes:
        name: registry name (``labram`` ...), also the ``arch:`` spelling.
        cls_name: the class in ``braindecode.models``.
        sfreq: sampling rate the checkpoints were trained at (Hz).
        patch: samples per patch (window length must be a multiple); 1 = any length.
        scale: volts -> model units before ``normalize``.
        normalize: ``none`` | ``quantile95`` (per channel, BIOT) | ``minmax-scale`` (BENDR: per trial to [-1, 1]
            plus the relative-amplitude channel).
        channels: the default channel table, in order.
        table: every channel name the checkpoint knows (() = any name).
        blocks: path of the block stack under the braindecode model (layer-wise LR decay). The adapter presets
            are in :mod:`foundation.adapters.targets` (LoRA) and ``foundation.adapters.dopamine.model``, by name.
        defaults: constructor arguments of the released size that the weights do not tell (heads).
        features: ``(net, x [B, C, T], input_chans) -> features``.
    """

    name: str
    cls_name: str
    sfreq: float
    patch: int
    scale: float
    normalize: str
    channels: tuple[str, ...]
    table: tuple[str, ...]
    blocks: str
    defaults: dict[str, Any] = field(default_factory=dict)
    features: Callable[..., torch.Tensor] = _pooled_features


def _tables() -> dict[str, tuple[str, ...]]:
    from braindecode.models.bendr import BENDR_CHANNEL_ORDER
    from braindecode.models.biot import BIOT_CHANNEL_ORDER
    from braindecode.models.eegpt import EEGPT_CHANNELS
    from braindecode.models.labram import LABRAM_CHANNEL_ORDER

    return {"labram": tuple(n.upper() for n in LABRAM_CHANNEL_ORDER), "eegpt": tuple(EEGPT_CHANNELS),
            "biot": tuple(n.upper() for n in BIOT_CHANNEL_ORDER), "bendr": tuple(n.upper() for n in BENDR_CHANNEL_ORDER)}


def _specs() -> dict[str, ArchSpec]:
    t = _tables()
    return {
        "labram": ArchSpec("labram", "Labram", 200.0, 200, 1e4, "none", STANDARD_1020, t["labram"], "blocks",
                           {}, _labram_features),
        "cbramod": ArchSpec("cbramod", "CBraMod", 200.0, 200, 1e4, "none", STANDARD_1020, (), "encoder.layers",
                            {"nhead": 8}, _cbramod_features),
        "eegpt": ArchSpec("eegpt", "EEGPT", 256.0, 64, 1e3, "none", STANDARD_1020, t["eegpt"],
                          "target_encoder.blocks", {"num_heads": 8}, _eegpt_features),
        "biot": ArchSpec("biot", "BIOT", 200.0, 1, 1e6, "quantile95", t["biot"][:16], t["biot"],
                         "encoder.transformer.layers.layers", {"num_heads": 8}),
        "bendr": ArchSpec("bendr", "BENDR", 256.0, 1, 1e6, "minmax-scale", t["bendr"], t["bendr"],
                          "contextualizer.transformer_layers", {"transformer_heads": 8}),
    }


_SPECS: dict[str, ArchSpec] = {}


def arch_spec(name: str) -> ArchSpec:
    """The spec of ``name`` (``labram``, ``cbramod``, ``eegpt``, ``biot``, ``bendr``).

    Raises:
        ConfigError: an unknown name (lists the valid ones).
    """
    from foundation.errors import ConfigError, did_you_mean

    if not _SPECS:
        _SPECS.update(_specs())
    if name not in _SPECS:
        raise ConfigError(f"--arch {name!r}: unknown architecture; {did_you_mean(name, _SPECS)}")
    return _SPECS[name]


ARCHS = ("labram", "cbramod", "eegpt", "biot", "bendr")


def channel_table(name: str) -> tuple[str, ...]:
    """Every channel name architecture ``name`` has an embedding for (() = any)."""
    return arch_spec(name).table


def _resolve_class(value: Any) -> Any:
    """A class named in a braindecode ``config.json`` (``"torch.nn.modules.activation.GELU"``) -> ``nn.GELU``.

    Only ``torch.nn`` classes are resolved (nothing is imported by name).
    """
    if isinstance(value, str) and value.startswith("torch.nn."):
        cls = getattr(nn, value.rsplit(".", 1)[1], None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
        from foundation.errors import CheckpointError

        raise CheckpointError(f"braindecode config names {value!r}, not a torch.nn module class the suite resolves")
    return value


def build_net(name: str, n_chans: int, n_times: int, sfreq: float, channels: tuple[str, ...],
              kwargs: dict[str, Any]) -> nn.Module:
    """The braindecode model of ``name`` with its classification head replaced by ``nn.Identity``.

    Args:
        name: architecture.
        n_chans, n_times, sfreq: input size (the contract's).
        channels: channel names in input order (EEGPT builds its channel ids from them).
        kwargs: size arguments of the braindecode constructor (``embed_dim``, ``num_layers`` ...).
    """
    import warnings

    import braindecode.models as bd

    spec = arch_spec(name)
    kwargs = {k: _resolve_class(v) for k, v in kwargs.items()}
    args: dict[str, Any] = {**spec.defaults, **kwargs, "n_chans": n_chans, "n_times": n_times, "sfreq": sfreq,
                            "n_outputs": 2}
    if name == "eegpt":
        args.update(chs_info=[{"ch_name": c} for c in channels], chan_proj_type="none", return_encoder_output=True)
        args.setdefault("patch_stride", args.get("patch_size", 64))  # the official default: no overlap
    if name == "cbramod":
        args["return_encoder_output"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sampling-rate and channel-table advice; the contract handles both
        net = getattr(bd, spec.cls_name)(**args)
    net.final_layer = nn.Identity()
    return net
