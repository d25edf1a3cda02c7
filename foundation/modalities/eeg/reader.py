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

A recipe can rename channels (``channel_map``, applied first), set channel types
(``channel_types``: misc/EOG/ECG/... channels are then dropped and reported) and give a
montage file instead of a template name (see :mod:`.channels`).

A data section shorter than the header says (a copy cut off mid-file) is found before MNE
reads the file (MNE would warn and read a shorter recording): EDF/BDF by their record count,
BrainVision by ``DataPoints`` and whole samples. It is a :class:`~foundation.errors.DataError`
naming the file and the seconds missing, unless ``allow_truncated`` is set: then the intact
records are read and :attr:`Recording.truncated` says what was lost (the cache report lists it).

Every failure a user can cause (corrupt or truncated file, unknown format, no EEG
channel, no known channel name) raises :class:`~foundation.errors.DataError` naming
the file and the fix.
"""
from __future__ import annotations

import configparser
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError
from foundation.modalities.eeg.bids import is_bids_recording, read_bids_raw
from foundation.modalities.eeg.channels import channel_positions

__all__ = ["EEG_EXTENSIONS", "Recording", "check_complete", "find_recordings", "read_recording"]

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
        truncated: empty for a whole file; for a truncated one read under ``allow_truncated``, what was lost.
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
    truncated: str = ""


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


def _edf_missing(path: Path) -> tuple[float, float] | None:
    """(seconds declared, seconds missing) of an EDF/BDF file whose records stop early; None when whole/unknown."""
    bps = 3 if path.suffix.lower() == ".bdf" else 2
    try:
        with path.open("rb") as fh:
            head = fh.read(256)
            n_header, n_records = int(head[184:192].decode("ascii")), int(head[236:244].decode("ascii"))
            duration, ns = float(head[244:252].decode("ascii")), int(head[252:256].decode("ascii"))
            fh.seek(256 + ns * 216)
            samples = [int(fh.read(8).decode("ascii")) for _ in range(ns)]
    except (ValueError, UnicodeDecodeError, OSError):
        return None  # an unreadable header: mne's own error names it
    record = sum(samples) * bps
    if n_records <= 0 or record <= 0 or duration <= 0:
        return None  # -1: record count unknown (a recording not closed), nothing declared to check against
    whole = max(path.stat().st_size - n_header, 0) // record
    if whole >= n_records:
        return None
    return n_records * duration, (n_records - whole) * duration


def _brainvision_missing(path: Path) -> tuple[float, float] | None:
    """(seconds declared, seconds missing) of a BrainVision recording whose .eeg file stops early, else None."""
    try:
        cfg = configparser.ConfigParser(interpolation=None, strict=False)
        cfg.read_string(path.read_text(encoding="latin-1").split("\n", 1)[1])
        common = cfg["Common Infos"]
        data = path.parent / common["DataFile"]
        n_ch, interval_us = int(common["NumberOfChannels"]), float(common["SamplingInterval"])
        fmt = cfg["Binary Infos"].get("BinaryFormat", "INT_16").upper()
        points = int(common.get("DataPoints", "0") or 0)
    except (KeyError, ValueError, IndexError, configparser.Error, OSError):
        return None
    bps = {"INT_16": 2, "UINT_16": 2, "INT_32": 4, "IEEE_FLOAT_32": 4}.get(fmt)
    if bps is None or n_ch <= 0 or interval_us <= 0 or not data.is_file():
        return None
    size = data.stat().st_size
    have = size // (n_ch * bps)
    if points > have:
        return points * interval_us * 1e-6, (points - have) * interval_us * 1e-6
    if size % (n_ch * bps):  # no DataPoints, but the last sample is cut
        return have * interval_us * 1e-6, interval_us * 1e-6
    return None


def check_complete(path: str | Path, allow_truncated: bool = False) -> str:
    """Check that a recording's data section is as long as its header says.

    Args:
        path: an EEG file (EDF/BDF and BrainVision are checked; MNE refuses cut FIF/EEGLAB files itself).
        allow_truncated: accept a truncated file and say what is lost instead of raising.

    Returns:
        "" for a whole file, else what was lost (under ``allow_truncated``).

    Raises:
        DataError: the file is truncated and ``allow_truncated`` is False.
    """
    path = Path(path)
    ext = path.suffix.lower()
    found = _edf_missing(path) if ext in (".edf", ".bdf") else _brainvision_missing(path) if ext == ".vhdr" else None
    if found is None:
        return ""
    declared, missing = found
    if not allow_truncated:
        raise DataError(f"{path}: truncated: the header declares {declared:g} s of data but the data section ends "
                        f"{missing:g} s early (a copy cut off mid-file?); re-copy or re-export it, or set "
                        "data.allow_truncated: true to read the intact part")
    return f"truncated: {missing:g} of {declared:g} s missing (the intact {declared - missing:g} s were read)"


def _apply_recipe_channels(raw: Any, path: Path, channel_map: dict[str, str] | None,
                           channel_types: dict[str, str] | None) -> None:
    """Rename channels (``channel_map``) then set types (``channel_types``, by new or original name)."""
    channel_map = channel_map or {}
    rename = {old: new for old, new in channel_map.items() if old in raw.ch_names and old != new}
    if rename:
        clash = sorted(set(rename.values()) & (set(raw.ch_names) - set(rename)))
        if clash:
            raise DataError(f"{path}: data.channel_map renames onto {clash}, already channel names of this file; "
                            "map those too or pick other names")
        raw.rename_channels(rename, verbose="error")
    if channel_types:
        types = {}
        for name, kind in channel_types.items():
            name = channel_map.get(name, name)
            if name in raw.ch_names:
                types[name] = kind
        if types:
            try:
                raw.set_channel_types(types, verbose="error")
            except (ValueError, KeyError) as err:
                raise DataError(f"{path}: data.channel_types {types}: {err}") from err


def read_recording(path: str | Path, montage: str | None = None, allow_truncated: bool = False,
                   channel_map: dict[str, str] | None = None,
                   channel_types: dict[str, str] | None = None) -> Recording:
    """Read one recording: EEG channels only, canonical names, 3D positions, data loaded.

    Args:
        path: an EEG file in any format ``mne.io.read_raw`` reads.
        montage: template montage name or montage file (``.elc``, ``.sfp``, ``.bvef``, ``.loc`` ...) for
            channels without digitised positions (None: the 10-05 template).
        allow_truncated: read the intact part of a file shorter than its header says (see :func:`check_complete`).
        channel_map: ``{name in the file: new name}`` applied before anything else.
        channel_types: ``{name: mne channel type}`` (``misc``, ``eog``, ``ecg`` ...), after renaming.

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
    truncated = check_complete(path, allow_truncated)
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
    _apply_recipe_channels(raw, path, channel_map, channel_types)
    try:
        types = raw.get_channel_types()
    except (KeyError, ValueError) as err:  # a channel kind/coil code mne does not know: a corrupt channel table
        raise DataError(f"{path}: the channel table is corrupt (unknown channel kind or coil code {err}); re-export "
                        "the file or remove it from the corpus") from err
    dropped = {n: f"channel type {t!r} is not EEG" for n, t in zip(raw.ch_names, types) if t != "eeg"}
    eeg = [n for n, t in zip(raw.ch_names, types) if t == "eeg"]
    if not eeg:
        raise DataError(f"{path}: no EEG channel (types found: {sorted(set(types))}); set the channel types "
                        "(data.channel_types) or remove the file")
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
                     line_freq=float(line) if line else None, truncated=truncated)
