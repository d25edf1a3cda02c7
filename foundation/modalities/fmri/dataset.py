"""The SLIM-Brain window dataset: folder / BIDS tree -> cached scans -> salient windows -> batches.

``FMRIWindows.prepare(config)`` (once per node, see :func:`foundation.data.protocol.prepare_dataset`)
generates the demo corpus when ``source: demo``, builds the int8 memory-mapped cache
(:mod:`~foundation.modalities.fmri.cache`, under ``cache_dir/store``) and picks the windows of every scan
(``selection``: "saliency" = stage 1's top k, "random" = k random windows, "all" = every non-overlapping
window), written to ``cache_dir/windows-<selection>-k<k>-s<seed>-w<window>.json``. An item is one window::

    {"x": [1, W, Z, Y, X] float32, "unit_fg": [U] bool (mask unit holds brain voxels),
     "label": int64 (or float32), "scan": int64, "start": int64}

Unit order is row-major over the encoder's unit grid (time, z, y, x); ``unit_size``
must equal the encoder's patch_stride * mask_unit_size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.atomic import atomic_write_json
from foundation.data.cache import DataCache
from foundation.data.demo import check_source, is_demo, source_path
from foundation.errors import ConfigError, DataError
from foundation.modalities.fmri.cache import FMRICacheBuilder, open_scan
from foundation.modalities.fmri.hiera_utils import unit_foreground
from foundation.modalities.fmri.preprocess import PreprocessConfig
from foundation.modalities.fmri.reader import find_scans

__all__ = ["FMRIWindowsConfig", "FMRIWindows", "SELECTIONS"]

SELECTIONS = ("saliency", "random", "all")


@dataclass
class FMRIWindowsConfig:
    """Where the scans are, how they are preprocessed, which windows are served and where the cache goes."""

    source: str = field(default="demo", metadata={"help": "folder of 4D NIfTI files or a BIDS tree, or 'demo' to generate the demo corpus"})
    labels: str = field(default="", metadata={"help": "TSV with a 'file' column and label_column ('' = labels.tsv of the source, if any)"})
    label_column: str = field(default="label", metadata={"help": "labels TSV column returned as batch['label']"})
    cache_dir: str = field(default="runs/cache/slim-brain", metadata={"help": "cache folder (relative to the working dir); the demo corpus goes to <cache_dir>-demo"})
    grid: tuple[int, int, int] = field(default=(96, 96, 96), metadata={"help": "spatial grid (Z, Y, X) in voxels"})
    voxel_size: float = field(default=2.0, metadata={"help": "voxel size in mm (0: keep)"})
    tr: float = field(default=0.8, metadata={"help": "repetition time in s after resampling (0: keep) (unverified)"})
    mask: str = field(default="mni", metadata={"help": "brain mask: mni, compute or a mask file"})
    window: int = field(default=40, metadata={"help": "frames per window (= encoder input_size[0])"})
    top_k: int = field(default=4, metadata={"help": "windows per scan (unverified)"})
    selection: str = field(default="saliency", metadata={"help": "saliency, random or all"})
    saliency_pool: int = field(default=4, metadata={"help": "voxels per coarse parcel edge for saliency"})
    allow_truncated: bool = field(default=False, metadata={"help": "read the intact volumes of a NIfTI file shorter than its header says (the frames lost go to the cache report) instead of leaving it out"})
    unit_size: tuple[int, int, int, int] = field(default=(8, 32, 32, 32), metadata={"help": "frames/voxels per mask unit (T, Z, Y, X)"})
    seed: int = field(default=0, metadata={"help": "seed of the demo corpus and of random windows"})
    demo_subjects: int = field(default=24, metadata={"help": "demo corpus: subjects (one scan each)"})
    demo_frames: int = field(default=96, metadata={"help": "demo corpus: frames per scan"})
    demo_voxel_size: float = field(default=6.0, metadata={"help": "demo corpus: voxel size in mm"})

    def __post_init__(self) -> None:
        self.grid, self.unit_size = tuple(self.grid), tuple(self.unit_size)
        check_source(self.source)
        if self.selection not in SELECTIONS:
            raise ConfigError(f"data.selection: unknown {self.selection!r}; valid: {', '.join(SELECTIONS)}")
        if self.window < 1 or self.top_k < 1:
            raise ConfigError(f"data.window ({self.window}) and data.top_k ({self.top_k}) must be >= 1")
        dims = (self.window,) + self.grid
        bad = [f"{d} % {u}" for d, u in zip(dims, self.unit_size) if d % u]
        if bad:
            raise ConfigError(f"data.unit_size {self.unit_size} must divide (window, *grid) = {dims}; remainders in {bad}")

    @property
    def preprocess(self) -> PreprocessConfig:
        """The scan preprocessing these settings ask for (grid given as (X, Y, Z))."""
        return PreprocessConfig(grid=self.grid[::-1], voxel_size=self.voxel_size, tr=self.tr, mask=self.mask)


def _read_table(path: Path) -> dict[str, dict[str, str]]:
    lines = path.read_text().strip().splitlines()
    head = lines[0].split("\t")
    if "file" not in head:
        raise DataError(f"{path}: the labels table needs a 'file' column (tab-separated), found {head}")
    return {row["file"]: row for row in (dict(zip(head, line.split("\t"))) for line in lines[1:])}


def _labels(config: FMRIWindowsConfig) -> dict[str, dict[str, str]] | None:
    """The labels table (``data.labels``, else ``labels.tsv`` of the source when there is one)."""
    if config.labels:
        path = Path(config.labels)
        if not path.is_file():
            raise DataError(f"data.labels: {path} does not exist; give a TSV with a 'file' column or leave it empty")
        return _read_table(path)
    path = source_path(config.source, config.cache_dir) / "labels.tsv"
    return _read_table(path) if path.is_file() else None


def _cache(config: FMRIWindowsConfig) -> DataCache:
    # the parcel check runs whatever data.selection says, so switching selection reuses the cache
    builder = FMRICacheBuilder(config.preprocess, config.window, _labels(config), config.saliency_pool,
                               config.allow_truncated)
    return DataCache(Path(config.cache_dir) / "store", builder)


class FMRIWindows(torch.utils.data.Dataset):
    """Windows of cached scans (see the module docstring)."""

    config_class = FMRIWindowsConfig
    collate = staticmethod(torch.utils.data.default_collate)

    @classmethod
    def windows_file(cls, config: FMRIWindowsConfig) -> Path:
        return Path(config.cache_dir) / f"windows-{config.selection}-k{config.top_k}-s{config.seed}-w{config.window}.json"

    @classmethod
    def prepare(cls, config: FMRIWindowsConfig) -> dict[str, Any]:
        """Generate the demo corpus (``source: demo``), build the cache and choose windows.

        Returns:
            The cache report (every scan, kept or left out and why).
        """
        from foundation.modalities.fmri.demo_corpus import make_demo_corpus
        from foundation.modalities.fmri.saliency import random_windows, top_k_windows

        source = source_path(config.source, config.cache_dir)
        if is_demo(config.source):
            make_demo_corpus(source, config.demo_subjects, config.demo_frames, voxel_size=config.demo_voxel_size,
                             seed=config.seed)
        cache = _cache(config)
        report = cache.prepare(find_scans(source))
        index = cache.index()
        path = cls.windows_file(config)
        if path.is_file() and json.loads(path.read_text()).get("fingerprint") == index["fingerprint"]:
            return report  # windows already chosen from this cache build
        rng = np.random.default_rng(config.seed)
        windows = []
        for entry in index["entries"]:
            n_times = entry["meta"]["n_times"]
            if config.selection == "saliency":
                vol, mask = open_scan(cache, entry)
                starts = top_k_windows(vol, mask, config.window, config.top_k, pool=config.saliency_pool,
                                       where=entry["source"])
            elif config.selection == "random":
                starts = random_windows(n_times, config.window, config.top_k, rng)
            else:
                starts = list(range(0, n_times - config.window + 1, config.window))
            windows.append(starts)
        atomic_write_json(path, {"fingerprint": index["fingerprint"], "windows": windows})
        return report

    def __init__(self, config: FMRIWindowsConfig) -> None:
        self.config = config
        self.cache = _cache(config)
        self.index = self.cache.index(lambda: find_scans(source_path(config.source, config.cache_dir)))
        self.scans = self.index["entries"]
        path = self.windows_file(config)
        if not path.exists():
            raise DataError(f"{path}: no window list; run FMRIWindows.prepare(config) first (pretrain.py does)")
        chosen = json.loads(path.read_text())
        if chosen.get("fingerprint") != self.index["fingerprint"]:
            raise DataError(f"{path}: the window list belongs to another cache build; run FMRIWindows.prepare(config) again")
        self.items = [(i, s) for i, starts in enumerate(chosen["windows"]) for s in starts]
        ut = config.window // config.unit_size[0]
        self._fg = []
        for entry in self.scans:
            _, mask = open_scan(self.cache, entry)
            if tuple(mask.shape) != config.grid:
                raise DataError(f"{self.cache.folder}: cached grid {tuple(mask.shape)} != data.grid {config.grid}; "
                                "run FMRIWindows.prepare(config) or fix data.grid")
            self._fg.append(torch.from_numpy(np.tile(unit_foreground(mask, config.unit_size[1:]), ut)))

    def label(self, scan: int) -> Any:
        row = self.scans[scan]["meta"].get("label")
        if row is None:
            return -1
        if self.config.label_column not in row:
            raise DataError(f"labels table has no column {self.config.label_column!r} (columns: {sorted(row)}); set data.label_column")
        value = float(row[self.config.label_column])
        return int(value) if value.is_integer() else value

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        scan, start = self.items[i]
        entry = self.scans[scan]
        vol, _ = open_scan(self.cache, entry)
        x = torch.from_numpy(np.asarray(vol[start:start + self.config.window], dtype=np.float32) * entry["meta"]["scale"])
        lab = self.label(scan)
        return {
            "x": x.unsqueeze(0),  # [W, Z, Y, X] -> [1, W, Z, Y, X]
            "unit_fg": self._fg[scan],
            "label": torch.tensor(lab, dtype=torch.int64 if isinstance(lab, int) else torch.float32),
            "scan": torch.tensor(scan),
            "start": torch.tensor(start),
        }

    @property
    def num_classes(self) -> int:
        """Classes of an integer label column: the largest label + 1 (0 when the column holds no integer label)."""
        labels = [self.label(i) for i in range(len(self.scans))]
        ints = [v for v in labels if isinstance(v, int) and v >= 0]
        return max(ints) + 1 if ints and len(ints) == len(labels) else 0

    @property
    def num_targets(self) -> int:
        """Regression targets: 1 (the label column)."""
        return 1

    def groups(self) -> list[str]:
        """Subject of each item, for subject-wise splits: the labels table's subject column, else the BIDS
        ``sub-`` entity of the scan, else its source file."""
        out = []
        for scan, _ in self.items:
            entry = self.scans[scan]
            subject = (entry["meta"].get("label") or {}).get("subject") or entry["meta"].get("subject")
            out.append(str(subject or entry["source"]))
        return out

    def item_labels(self) -> list[Any]:
        """Label of every item (its scan's row of the labels table; no volume is read)."""
        by_scan = [self.label(k) for k in range(len(self.scans))]
        return [by_scan[scan] for scan, _ in self.items]

    def item_sources(self) -> list[str]:
        """The scan file of each window, with the window's first frame (``file#frame=N``)."""
        return [f"{self.scans[scan]['source']}#frame={start}" for scan, start in self.items]

    def preprocessing(self) -> dict[str, Any]:
        """What a model trained on these windows expects of new scans (goes into config.json and the card)."""
        c = self.config
        return {"modality": "fmri", "grid_zyx": list(c.grid), "voxel_size_mm": float(c.voxel_size),
                "tr_s": float(c.tr), "window_frames": int(c.window), "brain_mask": c.mask,
                "normalisation": "per-voxel z-score over time inside the brain mask, zero outside",
                "layout": "[1, T, Z, Y, X]"}

    def describe(self) -> str:
        """One paragraph for the model card."""
        c = self.config
        left = self.cache.report()["n_left_out"]
        src = "the generated demo corpus" if is_demo(c.source) else c.source
        return (f"{len(self.scans)} fMRI scans ({src}; {left} left out), grid {c.grid} at {c.voxel_size} mm, "
                f"TR {c.tr} s, {len(self)} windows of {c.window} frames ({c.selection}, k={c.top_k}).")
