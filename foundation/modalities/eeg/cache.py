"""The EEG window cache: a :class:`~foundation.data.cache.CacheBuilder` for recordings.

Each recording is read (:mod:`.reader`), preprocessed (:mod:`.preprocess`), cut into windows and given
the neurodynamics statistics of each unmasked window (:mod:`.neurostats`); :meth:`EEGCacheBuilder.finalize`
then pads every recording to the corpus' largest channel count, z-scores the statistics over the corpus and
writes the store (each per-window array is then cut into shards, ``shards/<name>.<k>.npy``, read through
:class:`~foundation.data.cache.ShardedArray`):

==================  ==============================  =============================================
file                shape / content                 meaning
==================  ==============================  =============================================
windows.npy         [W, Cmax, T] float16            windows in model units, zero-padded channels
positions.npy       [W, Cmax, 3] float32            electrode positions in metres
chan_mask.npy       [W, Cmax] bool                  True = real channel, False = padding
stats.npy           [W, Cmax, S] float32            z-scored statistics of the unmasked window
labels.npy          [W] int64                       class index, -1 when unlabelled
subjects.npy        [W] int64                       index into index.json "subjects"
index.json          entries, subjects, stats mean/std, settings, the shard table (see foundation.data.cache),
                    subject_runs: [[first window, windows, subject], ...], the runs of consecutive windows of one
                    subject (one per change of subject between recordings), so a subject filter needs no shard
report.json         every recording, kept or left out and why (see foundation.data.cache)
==================  ==============================  =============================================

A bad file (corrupt, truncated, too short, NaNs, no known channel, sampling rate too low, flat throughout) is left
out and listed in ``report.json`` with its :class:`~foundation.errors.DataError`; the rest of the corpus is still
cached. Windows in which every channel is flat (an all-zero gap) are left out of a kept recording and counted in
its report notes, as is the part of a truncated recording read under ``allow_truncated``.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from foundation.data.cache import PARTS, CacheBuilder, Part, path_signature
from foundation.errors import DataError
from foundation.modalities.eeg.channels import is_montage_file
from foundation.modalities.eeg.neurostats import StatsConfig, stat_names, window_stats
from foundation.modalities.eeg.preprocess import PreprocessConfig, cut_windows, preprocess
from foundation.modalities.eeg.reader import read_recording

__all__ = ["EEGCacheBuilder", "drop_flat_windows", "subject_runs", "rows_of_subjects", "FLAT"]

FLAT = 1e-4  # model units (1e-4 * 100 uV = 10 nV): a window whose every channel varies less is a dead segment
FLAT_RATIO = 0.05  # ... or less than this share of the recording's median window (a zero gap plus filter ringing)


def drop_flat_windows(win: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Leave out windows in which every channel is flat (an all-zero or constant segment: amplifier off, gap).

    A window is flat when its most varying channel's std is below :data:`FLAT` or below :data:`FLAT_RATIO`
    times the recording's median (the band-pass filter smears a little of the neighbouring signal into a gap).

    Args:
        win: windows [W, C, T] in model units.
        y: their labels [W].
        where: the file, for messages.

    Returns:
        ``(windows kept, labels kept, note)``; the note is empty when none was dropped.

    Raises:
        DataError: every window is flat (the recording carries no signal).
    """
    top = win.std(axis=2).max(axis=1)  # [W, C] -> [W]
    flat = (top < FLAT) | (top < FLAT_RATIO * np.median(top))
    if not flat.any():
        return win, y, ""
    if flat.all():
        raise DataError(f"{where}: every {win.shape[2]}-sample window is flat (all channels constant or zero): the "
                        "recording carries no signal; re-export it or remove it")
    return win[~flat], y[~flat], f"{int(flat.sum())} of {len(flat)} windows left out: flat (all channels constant or zero)"


def subject_runs(subjects: np.ndarray) -> list[list[int]]:
    """The runs of equal values in ``subjects`` [W] int64: ``[[first, length, subject], ...]`` in order."""
    if not len(subjects):
        return []
    starts = np.flatnonzero(np.r_[True, subjects[1:] != subjects[:-1]])
    lengths = np.diff(np.r_[starts, len(subjects)])
    return [[int(a), int(n), int(subjects[a])] for a, n in zip(starts, lengths)]


def rows_of_subjects(runs: list[list[int]], keep: list[int]) -> np.ndarray:
    """[rows] int64, in order, the cache rows whose subject (per :func:`subject_runs`) is in ``keep``."""
    wanted = set(keep)
    chosen = [np.arange(a, a + n, dtype=np.int64) for a, n, s in runs if s in wanted]
    return np.concatenate(chosen) if chosen else np.empty(0, np.int64)


class EEGCacheBuilder(CacheBuilder):
    """Recordings -> windows, positions, channel masks and statistics.

    Args:
        pre: preprocessing preset.
        stats: statistics settings.
        window_s: window length in seconds.
        labels: label class names (annotation descriptions); empty = unlabelled sliding windows.
        montage: template montage name or montage file for channels without digitised positions (None: the
            10-05 template).
        allow_truncated: read the intact part of a recording shorter than its header says (noted in the report).
        channel_map: channel renames applied to every recording first.
        channel_types: channel types (misc, eog, ecg ...) set after renaming.
    """

    kind = "eeg"
    version = "7"  # 7: subject_runs in the index; 6: per-window arrays in shards; 5: BIDS, truncation, flat windows
    item_arrays = ("windows", "positions", "chan_mask", "stats", "labels", "subjects")

    def __init__(self, pre: PreprocessConfig, stats: StatsConfig, window_s: float, labels: tuple[str, ...] = (),
                 montage: str | None = None, allow_truncated: bool = False, channel_map: dict[str, str] | None = None,
                 channel_types: dict[str, str] | None = None) -> None:
        self.pre, self.stats, self.window_s, self.labels, self.montage = pre, stats, window_s, tuple(labels), montage
        self.allow_truncated = allow_truncated
        self.channel_map, self.channel_types = dict(channel_map or {}), dict(channel_types or {})

    def settings(self) -> dict[str, Any]:
        montage: Any = self.montage
        if montage and is_montage_file(montage) and Path(montage).is_file():
            montage = path_signature(montage)  # an edited montage file rebuilds the cache
        return {"preprocess": dataclasses.asdict(self.pre), "stats": dataclasses.asdict(self.stats),
                "window_seconds": self.window_s, "labels": list(self.labels), "montage": montage,
                "allow_truncated": self.allow_truncated, "channel_map": self.channel_map,
                "channel_types": self.channel_types}

    def read_source(self, source: Path) -> Part:
        """One recording: ``win`` [W, C, T] float16, ``stats`` [W, C, S] float32, ``labels`` [W] int64."""
        rec = read_recording(source, self.montage, self.allow_truncated, self.channel_map, self.channel_types)
        p = preprocess(rec, self.pre)
        win, y = cut_windows(p, self.window_s, self.labels, where=str(source))
        win, y, flat_note = drop_flat_windows(win, y, str(source))
        st = np.stack([window_stats(w, p.sfreq, self.stats) for w in win])  # [W, C, S]
        meta = {"path": str(source), "subject": rec.subject, "session": rec.session, "channels": p.names,
                "positions": p.positions.tolist(), "position_source": rec.position_source, "dropped": p.dropped,
                "notch": list(p.notch), "line_freq": rec.line_freq}
        notes = [n for n in (rec.truncated, flat_note) if n]
        if rec.truncated:
            meta["truncated"] = rec.truncated
        if flat_note:
            meta["flat_windows"] = flat_note
        return Part({"win": win.astype(np.float16), "stats": st.astype(np.float32), "labels": y}, meta, notes)

    def entry_rows(self, entry: dict[str, Any]) -> tuple[int, int]:
        """The windows a recording became: ``(first_window, n_windows)`` (the index is split by shard)."""
        return int(entry["meta"]["first_window"]), int(entry["meta"]["n_windows"])

    def finalize(self, folder: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad and stack the recordings' windows; z-score the statistics over the corpus."""
        parts = folder / PARTS
        n_w = sum(len(np.load(parts / f"{e['key']}.labels.npy")) for e in entries)
        c_max = max(len(e["meta"]["channels"]) for e in entries)
        T = int(round(self.window_s * self.pre.sfreq))
        S = len(stat_names(self.stats))
        mm = np.lib.format.open_memmap
        windows = mm(folder / "windows.npy", "w+", np.float16, (n_w, c_max, T))
        positions = mm(folder / "positions.npy", "w+", np.float32, (n_w, c_max, 3))
        mask = mm(folder / "chan_mask.npy", "w+", np.bool_, (n_w, c_max))
        st_all = mm(folder / "stats.npy", "w+", np.float32, (n_w, c_max, S))
        ys, subj = np.empty(n_w, np.int64), np.empty(n_w, np.int64)
        subjects = sorted({e["meta"]["subject"] for e in entries})
        w0 = 0
        for e in entries:
            win = np.load(parts / f"{e['key']}.win.npy")  # [n, C, T]
            n, C = win.shape[:2]
            sl = slice(w0, w0 + n)
            windows[sl, :C] = win
            positions[sl, :C] = np.asarray(e["meta"]["positions"], np.float32)[None]
            mask[sl, :C] = True
            st_all[sl, :C] = np.load(parts / f"{e['key']}.stats.npy")
            ys[sl], subj[sl] = np.load(parts / f"{e['key']}.labels.npy"), subjects.index(e["meta"]["subject"])
            e["meta"].update(first_window=w0, n_windows=n)
            w0 += n
        valid = st_all[mask]  # [W * C_valid, S]
        mean, std = valid.mean(0), valid.std(0) + 1e-6
        st_all[:] = np.where(mask[..., None], (st_all - mean) / std, 0.0)
        for arr in (windows, positions, mask, st_all):
            arr.flush()
        del windows, positions, mask, st_all
        np.save(folder / "labels.npy", ys)
        np.save(folder / "subjects.npy", subj)
        shutil.rmtree(parts)
        return {"subjects": subjects, "subject_runs": subject_runs(subj), "label_names": list(self.labels), "stat_names": stat_names(self.stats),
                "stats_mean": mean.tolist(), "stats_std": std.tolist(), "sfreq": self.pre.sfreq,
                "window_seconds": self.window_s, "max_channels": c_max, "n_recordings": len(entries),
                "channel_counts": sorted({len(e["meta"]["channels"]) for e in entries})}
