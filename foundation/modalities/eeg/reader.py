"""Read EEG recordings through MNE: any format it reads, and BIDS folders.

``mne.io.read_raw`` picks the reader by extension (EDF/BDF, FIF, BrainVision ``.vhdr``,
EEGLAB ``.set``, Neuroscan ``.cnt`` ...). Non-EEG channels (EOG, ECG, EMG, stim, misc)
are dropped and reported; channel names are canonicalised and placed in 3D by
:mod:`foundation.modalities.eeg.channels`. In a BIDS folder
(``sub-<label>/[ses-<label>/]eeg/*_eeg.<ext>`` with its ``*_eeg.json``) the recording is
read by ``mne_bids.read_raw_bids`` (:mod:`foundation.modalities.eeg.bids`): events,
``channels.tsv`` bad channels, ``electrodes.tsv`` positions and ``PowerLineFrequency``.
Elsewhere, a sibling ``*_events.tsv`` (``onset``, ``duration``, ``trial_type``) is added to
the file's annotations. Channels marked bad (``info["bads"]``) are dropped and reported.

Every failure a user can cause (corrupt or truncated file, unknown format, no EEG
channel, no known channel name) raises :class:`~foundation.errors.DataError` naming
the file and the fix.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError
from foundation.modalities.eeg.bids import is_bids_recording, read_bids_raw
from foundation.modalities.eeg.channels import channel_positions

__all__ = ["EEG_EXTENSIONS", "Recording", "find_recordings", "read_recording"]

EEG_EXTENSIONS = (".edf", ".bdf", ".fif", ".fif.gz", ".vhdr", ".set", ".cnt", ".gdf")
_ENTITY = re.compile(r"(sub|ses|task|run)-([A-Za-z0-9]+)")


@dataclass
class Recording:
    """One EEG recording, EEG channels only, with canonical names and 3D positions.

    Attributes:
        path: the file read.
        raw: the ``mne.io.Raw`` (loaded into memory), EEG channels only, in ``names`` order.
        names: canonical channel names [C].
        positions: electrode positions [C, 3] in metres.
        position_source: "digitisation" or the template montage name.
        subject: subject label (BIDS ``sub-`` entity, else the file stem).
        session: session label (BIDS ``ses-`` entity, else "").
        dropped: ``{channel: reason}`` of channels left out (not EEG, marked bad, unknown name).
        line_freq: the power-line frequency the recording states (BIDS ``PowerLineFrequency``,
            ``info["line_freq"]``), None when it states none.
    """

    path: Path
    raw: Any
    names: list[str]
    positions: np.ndarray
    position_source: str
    subject: str
    session: str = ""
    dropped: dict[str, str] = field(default_factory=dict)
    line_freq: float | None = None


def _has_ext(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in EEG_EXTENSIONS)


def find_recordings(root: str | Path) -> list[Path]:
    """All EEG files under ``root`` (a file, a BIDS folder or any folder), sorted.

    In a BIDS folder only ``*_eeg.<ext>`` files under ``eeg/`` folders count (derivatives are skipped).

    Raises:
        DataError: ``root`` does not exist or holds no EEG file.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"EEG source {str(root)!r} does not exist; give a recording file or a folder of recordings")
    files = [p for p in root.rglob("*") if p.is_file() and _has_ext(p) and "derivatives" not in p.parts]
    if (root / "dataset_description.json").exists():
        files = [p for p in files if p.parent.name == "eeg" and re.search(r"_eeg\.", p.name)]
    if not files:
        raise DataError(f"EEG source {str(root)!r} holds no EEG file ({', '.join(EEG_EXTENSIONS)}); "
                        "point data.source at the folder with the recordings")
    return sorted(files)


def _entities(path: Path) -> dict[str, str]:
    return dict(_ENTITY.findall(path.name))


def _events_tsv(path: Path) -> Path | None:
    stem = re.sub(r"_eeg\..*$", "", path.name)
    cand = path.parent / f"{stem}_events.tsv"
    return cand if cand.exists() else None


def _add_bids_events(raw: Any, tsv: Path) -> None:
    """Add a sibling ``*_events.tsv`` (outside a BIDS dataset) to the annotations the file already carries.

    Onsets are seconds from the first sample; ``n/a`` durations (valid BIDS) are 0 s. The new
    annotations take the existing ones' ``orig_time`` (the measurement date), so a file with its
    own annotations and date merges instead of raising.
    """
    with tsv.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return
    missing = {"onset", "duration", "trial_type"} - set(rows[0])
    if missing:
        raise DataError(f"{tsv}: events file lacks column(s) {sorted(missing)}; BIDS events need onset, duration, trial_type")
    try:
        onset = [float(r["onset"]) for r in rows]
        duration = [0.0 if r["duration"].strip() == "n/a" else float(r["duration"]) for r in rows]
    except ValueError as err:
        raise DataError(f"{tsv}: onset must be a number and duration a number or n/a, in seconds ({err})") from err
    import mne

    orig = raw.annotations.orig_time
    shift = raw.first_time if orig is not None else 0.0  # with a date, onsets count from it, not from the first sample
    new = mne.Annotations([o + shift for o in onset], duration, [r["trial_type"] for r in rows], orig_time=orig)
    raw.set_annotations(raw.annotations + new)


def read_recording(path: str | Path, montage: str | None = None) -> Recording:
    """Read one recording: EEG channels only, canonical names, 3D positions, data loaded.

    Args:
        path: an EEG file in any format ``mne.io.read_raw`` reads.
        montage: template montage for channels without digitised positions (None: the 10-05 template).

    Returns:
        A :class:`Recording`.

    Raises:
        DataError: the file is missing, corrupt, truncated or of an unknown format; it has no EEG
            channel; or no channel can be placed on the head.
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check data.source")
    if not _has_ext(path):
        raise DataError(f"{path}: unknown EEG file extension; readable: {', '.join(EEG_EXTENSIONS)}")
    bids = is_bids_recording(path)
    if bids:
        raw, ent = read_bids_raw(path)
    else:
        try:
            raw = mne.io.read_raw(path, preload=True, verbose="error")
        except Exception as err:  # mne raises ValueError, OSError, RuntimeError, struct errors... for bad files
            raise DataError(f"{path}: mne could not read it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                            "the file is corrupt, truncated or not in the format its extension says; re-export it or "
                            "remove it from the corpus") from err
        ent = _entities(path)
    types = raw.get_channel_types()
    dropped = {n: f"channel type {t!r} is not EEG" for n, t in zip(raw.ch_names, types) if t != "eeg"}
    eeg = [n for n, t in zip(raw.ch_names, types) if t == "eeg"]
    if not eeg:
        raise DataError(f"{path}: no EEG channel (types found: {sorted(set(types))}); set the channel types "
                        "(raw.set_channel_types) or remove the file")
    bads = [n for n in raw.info["bads"] if n in eeg]
    for n in bads:
        dropped[n] = "marked bad in the recording (channels.tsv status / info['bads'])"
    eeg = [n for n in eeg if n not in bads]
    if not eeg:
        raise DataError(f"{path}: every EEG channel is marked bad ({bads}); fix channels.tsv / info['bads'] or remove the file")
    raw.pick(eeg, verbose="error")
    kept, names, pos, source = channel_positions(raw.info, montage, where=str(path))
    for i, n in enumerate(raw.ch_names):
        if i not in kept:
            dropped[n] = "name is not a 10-05 electrode and the file has no digitised positions"
    if len(kept) < len(raw.ch_names):
        raw.pick([raw.ch_names[i] for i in kept], verbose="error")
    tsv = None if bids else _events_tsv(path)
    if tsv is not None:
        _add_bids_events(raw, tsv)
    subject = ent.get("sub") or re.sub(r"(\.fif)?(\.gz)?$", "", path.stem)
    line = raw.info.get("line_freq")
    return Recording(path, raw, names, pos, source, subject, ent.get("ses", ""), dropped,
                     float(line) if line else None)
