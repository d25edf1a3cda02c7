"""``foundation.load`` / ``finetune --from`` for published EEG checkpoints: release files, braindecode folders, ``arch:``.

Accepted sources:

- a release file (``.pth``, ``.ckpt``, ``.pt``, ``.bin``, ``.safetensors``; see :mod:`.containers`), the architecture
  told from its keys or named with ``arch``;
- a braindecode Hub folder or repository (``config.json`` with ``braindecode_version`` + ``model.safetensors``); its
  config does not name the class, so the architecture is told from the config's fields or named with ``arch``;
- ``arch:labram`` (``cbramod``, ``eegpt``, ``biot``, ``bendr``): the architecture at random init (braindecode's
  default size, which is the released one, unless ``overrides`` say otherwise), labelled ``random init``.

:data:`IMPORTER` is what :mod:`foundation.registry` lists under ``IMPORTERS`` as ``eeg-published``.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from foundation.errors import CheckpointError, ConfigError
from foundation.modalities.eeg.published.archs import ARCHS, arch_spec
from foundation.modalities.eeg.published.containers import RELEASE_SUFFIXES, KeyReport, infer_kwargs, to_braindecode
from foundation.modalities.eeg.published.model import PublishedEEG, PublishedEEGConfig

__all__ = ["IMPORTER", "PublishedImporter", "load_published", "model_class"]

_CONFIG_FIELDS = {f.name for f in fields(PublishedEEGConfig)}
_SIGNAL_KEYS = {"n_outputs", "n_chans", "chs_info", "n_times", "input_window_seconds", "sfreq", "braindecode_version",
                "return_encoder_output", "chan_proj_type", "final_layer", "n_chans_target", "return_feature"}
_CONFIG_HINTS = {"neural_tokenizer": "labram", "conv_out_channels": "labram",
                 "channels_kernel_stride_padding_norm": "cbramod", "embed_num": "eegpt", "hop_length": "biot",
                 "encoder_h": "bendr"}
DATA_SETS = ("eeg-windows",)


def model_class(arch: str) -> type[PublishedEEG]:
    """The registered suite class of ``arch``."""
    from foundation.registry import MODELS

    arch_spec(arch)  # an unknown name is a ConfigError listing the valid ones
    return MODELS.get(arch)


def _braindecode_config(folder: Path) -> dict[str, Any] | None:
    file = folder / "config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and "braindecode_version" in data and "model_name" not in data else None


def _split_overrides(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(PublishedEEGConfig fields, braindecode constructor kwargs)`` of ``--arch-set`` overrides."""
    cfg, kw = {}, {}
    for key, value in (overrides or {}).items():
        (cfg if key in _CONFIG_FIELDS else kw)[key] = value
    return cfg, kw


def _n_times(arch: str, window_seconds: float | None, fallback: int | None) -> int:
    spec = arch_spec(arch)
    if window_seconds:
        return int(round(window_seconds * spec.sfreq))
    return fallback or int(4 * spec.sfreq)


def _from_release(path: Path, arch: str | None, window_seconds: float | None, exclude: tuple[str, ...],
                  cfg_over: dict[str, Any], kw_over: dict[str, Any]) -> tuple[PublishedEEG, KeyReport]:
    arch, state, report = to_braindecode(path, arch)
    kwargs, n_chans = infer_kwargs(arch, state)
    spec = arch_spec(arch)
    channels = cfg_over.pop("channels", None) or (spec.table[:n_chans] if n_chans else spec.channels)
    config = PublishedEEGConfig(n_times=_n_times(arch, window_seconds, None), channels=tuple(channels),
                                kwargs={**kwargs, **kw_over}, init=str(path.resolve()), **cfg_over)
    model = model_class(arch)(config)
    model.load_braindecode_state(state, report, exclude)
    return model, report


def _from_braindecode_folder(folder: Path, data: dict[str, Any], arch: str | None, window_seconds: float | None,
                             exclude: tuple[str, ...], cfg_over: dict[str, Any], kw_over: dict[str, Any],
                             source: str) -> tuple[PublishedEEG, KeyReport]:
    hinted = {a for k, a in _CONFIG_HINTS.items() if k in data}
    if arch is None:
        if len(hinted) != 1:
            raise CheckpointError(f"{source}/config.json: a braindecode model whose class the config does not name "
                                  f"(fields {sorted(data)[:8]} ...); name the architecture with --arch "
                                  f"({', '.join(ARCHS)})")
        arch = hinted.pop()
    spec = arch_spec(arch)
    chs = data.get("chs_info") or []
    names = tuple(str(c["ch_name"]).upper() for c in chs if isinstance(c, dict) and "ch_name" in c)
    n_chans = data.get("n_chans")
    channels = cfg_over.pop("channels", None) or names or (spec.table[:n_chans] if arch in ("biot", "bendr") and n_chans
                                                           else spec.channels)
    if n_chans and len(channels) != n_chans:
        raise CheckpointError(f"{source}/config.json: n_chans={n_chans} but {len(channels)} channel names "
                              f"({'chs_info' if names else 'the ' + arch + ' default table'}); give the channel names "
                              "in chs_info or with --arch-set channels=[...]")
    kwargs = {k: v for k, v in data.items() if k not in _SIGNAL_KEYS}
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{source}: no model.safetensors beside config.json; the suite reads braindecode folders "
                              "from their safetensors weights only")
    from foundation.modalities.eeg.published.containers import read_tensors

    state = dict(read_tensors(weights))
    report = KeyReport(source=str(source))
    for key in [k for k in state if k.startswith("final_layer.")]:
        report.dropped[key] = "braindecode classification head (the fine-tune brings its own)"
        del state[key]
    n_times = _n_times(arch, window_seconds, data.get("n_times"))
    config = PublishedEEGConfig(n_times=n_times, sfreq=float(data.get("sfreq") or 0.0), channels=tuple(channels),
                                kwargs={**kwargs, **kw_over}, init=str(source), **cfg_over)
    model = model_class(arch)(config)
    model.load_braindecode_state(state, report, exclude)
    return model, report


class PublishedImporter:
    """The ``eeg-published`` importer: tells whether it reads a source, what model it makes, and reads it."""

    name = "eeg-published"

    @staticmethod
    def claims(source: str, folder: Path | None = None) -> bool:
        """Whether ``source`` is a published EEG checkpoint (``folder``: where a Hub id's config.json landed)."""
        text = str(source)
        if text.startswith("arch:"):
            return text[5:] in ARCHS
        path = Path(text)
        if path.is_file():
            return path.suffix in RELEASE_SUFFIXES
        where = folder if folder is not None else path
        return where.is_dir() and _braindecode_config(where) is not None

    @staticmethod
    def model_name(source: str, arch: str | None = None, folder: Path | None = None) -> str:
        """The registered model the source becomes (``arch`` wins), without reading any weights."""
        text = str(source)
        if text.startswith("arch:"):
            return text[5:]
        if arch:
            arch_spec(arch)
            return arch
        path = Path(text)
        where = folder if folder is not None else path
        if where.is_dir():
            data = _braindecode_config(where) or {}
            hinted = {a for k, a in _CONFIG_HINTS.items() if k in data}
            if len(hinted) == 1:
                return hinted.pop()
            raise CheckpointError(f"{source}: a braindecode folder whose config.json does not tell the architecture; "
                                  f"name it with --arch ({', '.join(ARCHS)})")
        from foundation.modalities.eeg.published.containers import _state_of, detect_arch, read_tensors

        found = detect_arch(_state_of(read_tensors(path), path))
        if found is None:
            raise CheckpointError(f"{source}: cannot tell the architecture from its keys; name it with --arch "
                                  f"({', '.join(ARCHS)})")
        return found

    @staticmethod
    def owns(encoder: Any) -> bool:
        """Whether ``encoder`` is one of this importer's (a :class:`PublishedEEG`)."""
        return isinstance(encoder, PublishedEEG)

    @staticmethod
    def fits(data_name: str) -> bool:
        """Whether a recipe's data set can feed these encoders (the contract maps EEG windows onto them)."""
        return data_name in DATA_SETS

    @staticmethod
    def load(source: str, arch: str | None = None, *, window_seconds: float | None = None,
             exclude: tuple[str, ...] = (), overrides: dict[str, Any] | None = None,
             folder: Path | None = None) -> tuple[PublishedEEG, str]:
        """The encoder of ``source`` and one line saying how it was loaded (see :func:`load_published`)."""
        return load_published(source, arch, window_seconds=window_seconds, exclude=exclude, overrides=overrides,
                              folder=folder)

    @staticmethod
    def adapt_data(data_config: Any, encoder: PublishedEEG) -> Any:
        """The recipe's ``data`` config with the encoder's rate, units and window (see :mod:`.contract`)."""
        from foundation.modalities.eeg.published.contract import adapt_data_config

        return adapt_data_config(data_config, encoder.config)

    @staticmethod
    def adapt_dataset(dataset: Any, encoder: PublishedEEG) -> Any:
        """The data set mapped onto the encoder's channels (:class:`.contract.ContractWindows`)."""
        from foundation.modalities.eeg.published.contract import ContractWindows

        return ContractWindows(dataset, encoder.config)


IMPORTER = PublishedImporter()


def load_published(source: str, arch: str | None = None, *, window_seconds: float | None = None,
                   exclude: tuple[str, ...] = (), overrides: dict[str, Any] | None = None,
                   folder: Path | None = None) -> tuple[PublishedEEG, str]:
    """A published EEG checkpoint as a suite encoder (eval mode), strictly loaded.

    Args:
        source: a release file, a braindecode folder (or ``folder``, where its Hub snapshot is), or ``arch:NAME``.
        arch: the architecture when the source cannot tell it (or to insist on one).
        window_seconds: window length of the data (sets ``n_times`` at the architecture's rate).
        exclude: checkpoint/model keys (or prefixes) to leave out of the strict load.
        overrides: ``PublishedEEGConfig`` fields (``channels``, ``missing_channels`` ...) and braindecode size
            arguments (``num_heads`` ...).

    Returns:
        ``(encoder, report line)``; the key report is also at ``encoder.key_report``.

    Raises:
        CheckpointError: an unreadable or refused file, an unknown architecture, a partial load.
        ConfigError: an unknown architecture name, a window that does not fit the patch length.
    """
    cfg_over, kw_over = _split_overrides(overrides)
    text = str(source)
    if text.startswith("arch:"):
        name = text[5:]
        if arch and arch != name:
            raise ConfigError(f"--from {text} and --arch {arch} disagree; give one")
        spec = arch_spec(name)
        n_times = _n_times(name, window_seconds, cfg_over.pop("n_times", None))
        model = model_class(name)(PublishedEEGConfig(n_times=n_times, kwargs=kw_over, init="random init", **cfg_over))
        report = KeyReport(source=text)
        line = (f"{name} (braindecode {spec.cls_name}) at random init: no pretrained weights; input "
                f"{model.n_chans} channels x {model.config.n_times} samples at {model.config.sfreq:g} Hz")
        model.key_report = report
        return model.eval(), line
    path = Path(text)
    if path.is_file():
        model, report = _from_release(path, arch, window_seconds, tuple(exclude), cfg_over, kw_over)
    else:
        where = folder if folder is not None else path
        data = _braindecode_config(where)
        if data is None:
            raise CheckpointError(f"{source}: neither a release file ({', '.join(RELEASE_SUFFIXES)}) nor a braindecode "
                                  "folder (config.json with braindecode_version + model.safetensors)")
        model, report = _from_braindecode_folder(where, data, arch, window_seconds, tuple(exclude), cfg_over, kw_over,
                                                 text)
    model.key_report = report
    return model.eval(), f"{model.arch} (braindecode {model.spec.cls_name}): {report.summary()}"
