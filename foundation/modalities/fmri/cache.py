"""A memory-mapped store of preprocessed scans, built once, with an index and a report of what was left out.

Layout of a cache folder::

    index.json          spec, one entry per cached scan, "left_out": [{source, error}]
    scans/00000.npy     int8 volume [T, Z, Y, X]; value = int8 * entry["scale"]
    scans/00000_mask.npy  bool brain mask [Z, Y, X]

Volumes are z-scored (see :mod:`~foundation.modalities.fmri.preprocess`), so int8
with one scale per scan (max |z| / 127) keeps ~0.4% of the range per step while
taking a quarter of the float32 bytes; ``np.load(mmap_mode="r")`` reads only the
windows a batch needs. A bad file (3D, truncated, NaN, absurd TR, shorter than
``min_frames``) is left out with its :class:`~foundation.errors.DataError`
message; the rest of the folder is cached. Every file is written to a temporary
name and renamed; ``index.json`` is written last, so a crash leaves no index
that points at missing files.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError
from foundation.modalities.fmri.preprocess import PreprocessSpec, load_mni_mask, preprocess_scan
from foundation.modalities.fmri.reader import read_scan

__all__ = ["build_cache", "load_index", "open_scan", "quantize", "INDEX"]

INDEX = "index.json"


def quantize(vol: np.ndarray) -> tuple[np.ndarray, float]:
    """float32 -> (int8 volume, scale) with value ~= int8 * scale (round to nearest)."""
    peak = float(np.abs(vol).max())
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.rint(vol / scale), -127, 127).astype(np.int8), scale


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


def _signature(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, int(st.st_mtime_ns)]


def build_cache(
    files: Sequence[str | Path],
    out_dir: str | Path,
    spec: PreprocessSpec,
    min_frames: int,
    labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Preprocess ``files`` into ``out_dir`` (skipped when an index with the same spec and files exists).

    Args:
        files: 4D NIfTI files.
        out_dir: the cache folder.
        spec: the preprocessing.
        min_frames: scans with fewer frames after TR resampling are left out (one window).
        labels: optional file name -> label (int or float), stored in the index.

    Returns:
        The index: {"spec", "min_frames", "scans": [...], "left_out": [...]}.

    Raises:
        DataError: no file could be cached (the message lists why, file by file).
    """
    out = Path(out_dir)
    files = [Path(f) for f in files]
    wanted = {"spec": dataclasses.asdict(spec), "min_frames": min_frames, "sources": [_signature(f) for f in files]}
    index_path = out / INDEX
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if all(old.get(k) == json.loads(json.dumps(v)) for k, v in wanted.items()):
            return old
    (out / "scans").mkdir(parents=True, exist_ok=True)
    scans, left_out = [], []
    mni = load_mni_mask() if spec.mask == "mni" else None
    for f in files:
        try:
            scan = read_scan(f)
            vol, mask = preprocess_scan(scan, spec, mni)
            if vol.shape[0] < min_frames:
                raise DataError(
                    f"{f}: {vol.shape[0]} frames at TR {spec.tr} s (source {scan.n_times} at {scan.tr} s) is shorter than one "
                    f"window of {min_frames} frames; drop the scan or lower data.window"
                )
        except DataError as err:
            left_out.append({"source": str(f), "error": str(err)})
            continue
        q, scale = quantize(vol)
        key = f"{len(scans):05d}"
        _save_npy(out / "scans" / f"{key}.npy", q)
        _save_npy(out / "scans" / f"{key}_mask.npy", mask)
        entry = {"key": key, "source": str(f), "n_times": int(vol.shape[0]), "shape": list(vol.shape), "scale": scale,
                 "tr": scan.tr, "tr_note": scan.tr_note}
        if labels is not None:
            name = f.name
            if name not in labels:
                raise DataError(f"{f}: no label for {name!r} in the labels table; add it or remove the scan")
            entry["label"] = labels[name]
        scans.append(entry)
    if not scans:
        reasons = "\n".join(f"  {e['error']}" for e in left_out)
        raise DataError(f"{out}: none of the {len(files)} scans could be cached:\n{reasons}")
    index = {**wanted, "scans": scans, "left_out": left_out}
    tmp = index_path.with_name(INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return index


def load_index(out_dir: str | Path) -> dict[str, Any]:
    """Read a cache's index.

    Raises:
        DataError: no index (the cache was never built or its build failed).
    """
    path = Path(out_dir) / INDEX
    if not path.exists():
        raise DataError(f"{path}: no cache index; build it with build_cache (the dataset's prepare step)")
    return json.loads(path.read_text())


def open_scan(out_dir: str | Path, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one cached scan: (int8 volume [T, Z, Y, X], bool mask [Z, Y, X])."""
    base = Path(out_dir) / "scans"
    return np.load(base / f"{entry['key']}.npy", mmap_mode="r"), np.load(base / f"{entry['key']}_mask.npy")
