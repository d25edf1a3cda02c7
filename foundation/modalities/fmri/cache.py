"""The fMRI scan cache: a :class:`~foundation.data.cache.CacheBuilder` for 4D NIfTI scans.

Each kept scan is stored as two parts (see :mod:`foundation.data.cache` for the folder layout)::

    parts/<key>.vol.npy    int8 volume [T, Z, Y, X]; value = int8 * entry["meta"]["scale"]
    parts/<key>.mask.npy   bool brain mask [Z, Y, X]

Volumes are z-scored (see :mod:`~foundation.modalities.fmri.preprocess`), so int8 with one scale per scan
(max |z| / 127) keeps ~0.4% of the range per step while taking a quarter of the float32 bytes;
``np.load(mmap_mode="r")`` reads only the windows a batch needs. Scans are grouped, whole and in order, into
shards of about 64 MB (a scan never straddles two shards; a larger one is a shard alone), each shard's index
entries in ``shards/entries.<k>.json``, so that a rank under ``train.shard_assignment: rank`` reads only its
scans' files and entries. A bad file (3D, truncated, NaN, absurd TR,
shorter than ``min_frames``, flat inside the brain mask, no parcel left for the saliency stage, no label in a
given labels table) is left out and listed in ``report.json`` with its :class:`~foundation.errors.DataError`
message; the rest of the folder is cached. A truncated file read under ``allow_truncated`` is kept with a note
giving the frames and seconds lost.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from foundation.data.cache import CacheBuilder, DataCache, Part
from foundation.errors import DataError
from foundation.modalities.fmri.preprocess import PreprocessConfig, load_mni_mask, preprocess_scan
from foundation.modalities.fmri.reader import read_scan
from foundation.modalities.fmri.saliency import check_parcels, parcel_series

__all__ = ["FMRICacheBuilder", "open_scan", "quantize"]


def quantize(vol: np.ndarray) -> tuple[np.ndarray, float]:
    """float32 -> (int8 volume, scale) with value ~= int8 * scale (round to nearest)."""
    peak = float(np.abs(vol).max())
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.rint(vol / scale), -127, 127).astype(np.int8), scale


class FMRICacheBuilder(CacheBuilder):
    """4D scans -> int8 z-scored volumes and brain masks on the preprocessing grid.

    Args:
        preprocess: the target grid, voxel size, TR and mask.
        min_frames: scans with fewer frames after TR resampling are left out (one window).
        labels: optional file name -> label row (any JSON), stored in the entry's meta; a scan without a
            row is left out.
        saliency_pool: the saliency stage's parcel edge in voxels; a scan it could not score is left out
            (None: windows are not chosen by saliency).
        allow_truncated: read the intact volumes of a file shorter than its header says (noted in the report)
            instead of leaving it out.
    """

    kind = "fmri"
    version = "5"  # 5: scans grouped into shards, index split by shard; 4: anti-aliased resampling, polyphase TR
    part_arrays = ("vol", "mask")  # one file per scan, scans grouped whole into shards of about 64 MB
    source_settings = ("labels",)  # the labels table may be the source folder's labels.tsv

    def __init__(self, preprocess: PreprocessConfig, min_frames: int, labels: dict[str, Any] | None = None,
                 saliency_pool: int | None = None, allow_truncated: bool = False) -> None:
        self.preprocess, self.min_frames, self.labels = preprocess, min_frames, labels
        self.saliency_pool, self.allow_truncated = saliency_pool, allow_truncated
        self._mni: tuple[np.ndarray, np.ndarray] | None = None

    def settings(self) -> dict[str, Any]:
        return {"preprocess": dataclasses.asdict(self.preprocess), "min_frames": self.min_frames, "labels": self.labels,
                "saliency_pool": self.saliency_pool, "allow_truncated": self.allow_truncated}

    def read_source(self, source: Path) -> Part:
        """One scan: ``vol`` [T, Z, Y, X] int8 and ``mask`` [Z, Y, X] bool."""
        cfg = self.preprocess
        if cfg.mask == "mni" and self._mni is None:
            self._mni = load_mni_mask()
        scan = read_scan(source, allow_truncated=self.allow_truncated)
        meta: dict[str, Any] = {}
        if self.labels is not None:
            if source.name not in self.labels:
                raise DataError(f"{source}: no label for {source.name!r} in the labels table; add it or remove the scan")
            meta["label"] = self.labels[source.name]
        vol, mask = preprocess_scan(scan, cfg, self._mni)
        if vol.shape[0] < self.min_frames:
            raise DataError(f"{source}: {vol.shape[0]} frames at TR {cfg.tr} s (source {scan.n_times} at {scan.tr} s) "
                            f"is shorter than one window of {self.min_frames} frames; drop the scan or lower data.window")
        if not vol.any():  # z-scoring zeroes every voxel whose signal does not vary over time
            raise DataError(f"{source}: the scan is flat: no voxel inside the brain mask varies over time (constant "
                            "or all-zero data); it carries no signal, re-export it or remove it")
        q, scale = quantize(vol)
        if self.saliency_pool is not None:  # on the stored (int8) values the saliency stage will read
            check_parcels(parcel_series(q.astype(np.float32) * scale, mask, self.saliency_pool), self.saliency_pool,
                          str(source))
        meta.update(n_times=int(vol.shape[0]), shape=list(vol.shape), scale=scale, tr=scan.tr, tr_note=scan.tr_note,
                    subject=scan.subject, session=scan.session)
        notes = []
        if scan.truncated:
            meta["truncated"] = scan.truncated
            notes.append(scan.truncated)
        return Part({"vol": q, "mask": mask}, meta, notes)


def open_scan(cache: DataCache, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one cached scan: (int8 volume [T, Z, Y, X], bool mask [Z, Y, X])."""
    return cache.part(entry["key"], "vol"), cache.part(entry["key"], "mask", mmap=False)
