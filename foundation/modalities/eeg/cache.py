"""The window cache: preprocess a corpus once, read windows from memory-mapped arrays after.

:func:`build_cache` reads every recording (:mod:`.reader`), preprocesses it (:mod:`.preprocess`),
cuts windows, computes the neurodynamics statistics of each unmasked window (:mod:`.neurostats`),
z-scores them over the corpus and writes one folder:

==================  ==============================  =============================================
file                shape / content                 meaning
==================  ==============================  =============================================
windows.npy         [W, Cmax, T] float16            windows in model units, zero-padded channels
positions.npy       [W, Cmax, 3] float32            electrode positions in metres
chan_mask.npy       [W, Cmax] bool                  True = real channel, False = padding
stats.npy           [W, Cmax, S] float32            z-scored statistics of the unmasked window
labels.npy          [W] int64                       class index, -1 when unlabelled
subjects.npy        [W] int64                       index into index.json "subjects"
index.json          recordings, subjects, names     channel names per recording, stats mean/std, config
report.json         included / excluded files       every file left out and why, channels dropped
==================  ==============================  =============================================

A bad file (corrupt, too short, NaNs, no known channel, sampling rate too low) is left out
and listed in ``report.json`` with its :class:`~foundation.errors.DataError`; the rest of the
corpus is still cached. The folder is built under a temporary name and renamed into place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError
from foundation.modalities.eeg.neurostats import StatsConfig, stat_names, window_stats
from foundation.modalities.eeg.preprocess import PreprocessConfig, cut_windows, preprocess
from foundation.modalities.eeg.reader import read_recording

__all__ = ["cache_fingerprint", "build_cache", "load_index", "CACHE_FILES"]

CACHE_FILES = ("windows.npy", "positions.npy", "chan_mask.npy", "stats.npy", "labels.npy", "subjects.npy")


def cache_fingerprint(files: list[Path], pre: PreprocessConfig, stats: StatsConfig, window_s: float,
                      labels: tuple[str, ...]) -> str:
    """Hash of the inputs (paths, sizes, mtimes) and every setting that changes the cache."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps([dataclasses.asdict(pre), dataclasses.asdict(stats), window_s, list(labels), 1]).encode())
    return h.hexdigest()[:16]


def load_index(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's index.json.

    Raises:
        DataError: the folder is not a complete cache.
    """
    cache_dir = Path(cache_dir)
    missing = [f for f in (*CACHE_FILES, "index.json") if not (cache_dir / f).exists()]
    if missing:
        raise DataError(f"{cache_dir}: not a complete EEG cache (missing {missing}); build it with "
                        "EEGWindows.prepare(config) or delete the folder")
    return json.loads((cache_dir / "index.json").read_text())


def _one(path: Path, pre: PreprocessConfig, st: StatsConfig, window_s: float, labels: tuple[str, ...],
         montage: str | None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    rec = read_recording(path, montage)
    p = preprocess(rec, pre)
    win, y = cut_windows(p, window_s, labels, where=str(path))
    stats = np.stack([window_stats(w, p.sfreq, st) for w in win])  # [W, C, S]
    meta = {"path": str(path), "subject": rec.subject, "session": rec.session, "channels": p.names,
            "positions": p.positions.tolist(), "position_source": rec.position_source, "dropped": p.dropped}
    return meta, win, y, stats


def build_cache(files: list[Path], out_dir: str | Path, pre: PreprocessConfig, stats: StatsConfig, window_s: float,
                labels: tuple[str, ...] = (), montage: str | None = None, fingerprint: str = "") -> dict[str, Any]:
    """Preprocess ``files`` into a cache folder ``out_dir`` (replaced atomically when it exists).

    Args:
        files: recordings to read.
        out_dir: the cache folder.
        pre: preprocessing preset.
        stats: statistics settings.
        window_s: window length in seconds.
        labels: label class names (annotation descriptions); empty = unlabelled sliding windows.
        montage: template montage for channels without digitised positions.
        fingerprint: stored in index.json (see :func:`cache_fingerprint`) to tell when to rebuild.

    Returns:
        The report: ``{"included": [...], "excluded": [{"path", "reason"}], "n_windows": W}``.

    Raises:
        DataError: no file could be cached (the message lists why each was left out).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        parts, excluded = [], []
        for i, f in enumerate(files):
            try:
                meta, win, y, st = _one(Path(f), pre, stats, window_s, labels, montage)
            except DataError as err:
                excluded.append({"path": str(f), "reason": str(err)})
                continue
            np.save(tmp / f"part{i}_win.npy", win.astype(np.float16))
            np.save(tmp / f"part{i}_stats.npy", st)
            parts.append((i, meta, y))
        if not parts:
            reasons = "; ".join(e["reason"] for e in excluded[:5])
            raise DataError(f"EEG cache {out_dir}: none of the {len(files)} file(s) could be cached: {reasons}")
        n_w = sum(len(y) for _, _, y in parts)
        c_max = max(len(m["channels"]) for _, m, _ in parts)
        T = int(round(window_s * pre.sfreq))
        S = len(stat_names(stats))
        mm = np.lib.format.open_memmap
        windows = mm(tmp / "windows.npy", "w+", np.float16, (n_w, c_max, T))
        positions = mm(tmp / "positions.npy", "w+", np.float32, (n_w, c_max, 3))
        mask = mm(tmp / "chan_mask.npy", "w+", np.bool_, (n_w, c_max))
        st_all = mm(tmp / "stats.npy", "w+", np.float32, (n_w, c_max, S))
        ys, subj = np.empty(n_w, np.int64), np.empty(n_w, np.int64)
        subjects = sorted({m["subject"] for _, m, _ in parts})
        recordings, w0 = [], 0
        for i, meta, y in parts:
            win = np.load(tmp / f"part{i}_win.npy")
            C, n = win.shape[1], win.shape[0]
            sl = slice(w0, w0 + n)
            windows[sl, :C] = win
            positions[sl, :C] = np.asarray(meta["positions"], np.float32)[None]
            mask[sl, :C] = True
            st_all[sl, :C] = np.load(tmp / f"part{i}_stats.npy")
            ys[sl], subj[sl] = y, subjects.index(meta["subject"])
            recordings.append({**meta, "first_window": w0, "n_windows": n})
            w0 += n
            (tmp / f"part{i}_win.npy").unlink()
            (tmp / f"part{i}_stats.npy").unlink()
        valid = st_all[mask]  # [W * C_valid, S]
        mean, std = valid.mean(0), valid.std(0) + 1e-6
        st_all[:] = np.where(mask[..., None], (st_all - mean) / std, 0.0)
        for arr in (windows, positions, mask, st_all):
            arr.flush()
        del windows, positions, mask, st_all
        np.save(tmp / "labels.npy", ys)
        np.save(tmp / "subjects.npy", subj)
        report = {"included": [r["path"] for r in recordings], "excluded": excluded, "n_windows": n_w,
                  "dropped_channels": {r["path"]: r["dropped"] for r in recordings if r["dropped"]}}
        index = {"fingerprint": fingerprint, "recordings": recordings, "subjects": subjects, "label_names": list(labels),
                 "stat_names": stat_names(stats), "stats_mean": mean.tolist(), "stats_std": std.tolist(),
                 "sfreq": pre.sfreq, "window_seconds": window_s, "max_channels": c_max,
                 "preprocess": dataclasses.asdict(pre), "stats": dataclasses.asdict(stats)}
        (tmp / "index.json").write_text(json.dumps(index))
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
        return report
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
