"""BIDS EEG through ``mne_bids.read_raw_bids``: events, bad channels, electrode positions, line frequency.

A recording is read as BIDS when it sits in a BIDS dataset (a ``dataset_description.json``
above it) and has its required ``*_eeg.json`` sidecar. ``mne_bids`` then applies, with the
BIDS inheritance principle:

* ``*_events.tsv`` as the annotations (``n/a`` durations are valid and read as 0 s); they
  replace the annotations stored in the data file, so a BrainVision / EDF+ file with its own
  annotations and measurement date reads without an ``orig_time`` clash;
* ``*_channels.tsv``: channel types and ``status == bad`` into ``info["bads"]``;
* ``*_electrodes.tsv`` + ``*_coordsystem.json``: the digitised positions (the montage);
* ``PowerLineFrequency`` into ``info["line_freq"]`` (the notch of
  :func:`foundation.modalities.eeg.preprocess.preprocess`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from foundation.errors import DataError

__all__ = ["is_bids_recording", "read_bids_raw"]


def _sidecar(path: Path) -> Path:
    stem = re.sub(r"_eeg\..*$", "", path.name)
    return path.parent / f"{stem}_eeg.json"


def is_bids_recording(path: Path) -> bool:
    """Whether ``path`` is an ``*_eeg.<ext>`` file with its ``*_eeg.json`` sidecar inside a BIDS dataset.

    Raises:
        DataError: the file has BIDS sidecars (``_channels.tsv``) but not the required ``_eeg.json``,
            so they would be ignored.
    """
    if not re.search(r"_eeg\.", path.name):
        return False
    in_dataset = any((p / "dataset_description.json").is_file() for p in path.parents)
    if not _sidecar(path).is_file():
        channels = path.parent / (re.sub(r"_eeg\..*$", "", path.name) + "_channels.tsv")
        if in_dataset and channels.is_file():
            raise DataError(f"{path}: has {channels.name} but not its required sidecar {_sidecar(path).name}, so "
                            "mne_bids cannot read it; add the _eeg.json (SamplingFrequency, PowerLineFrequency, ...)")
        return False
    return in_dataset


def read_bids_raw(path: Path) -> tuple[Any, dict[str, str]]:
    """Read one BIDS recording with ``mne_bids.read_raw_bids`` (data loaded).

    Returns:
        ``(raw, entities)`` with entities ``{"sub": ..., "ses": ...}``.

    Raises:
        DataError: mne_bids cannot parse the path or read the recording and its sidecars.
    """
    try:
        import mne_bids
    except ImportError as err:  # pragma: no cover - mne-bids is a dependency
        raise ImportError("reading a BIDS EEG dataset needs mne-bids: pip install mne-bids") from err
    try:
        bids_path = mne_bids.get_bids_path_from_fname(path, verbose="error")
        raw = mne_bids.read_raw_bids(bids_path, verbose="error")
        raw.load_data(verbose="error")
    except Exception as err:  # mne_bids raises ValueError, RuntimeError, FileNotFoundError, KeyError...
        first = str(err).splitlines()[0] if str(err) else ""
        raise DataError(f"{path}: mne_bids.read_raw_bids could not read it ({type(err).__name__}: {first}); check the "
                        "recording and its BIDS sidecars (_eeg.json, _channels.tsv, _events.tsv, _electrodes.tsv)") from err
    return raw, {"sub": bids_path.subject or "", "ses": bids_path.session or ""}
