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

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.atomic import atomic_write_json
from foundation.data.cache import DataCache, ShardMap, check_sources_option
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
    check_sources: str = field(default="auto", metadata={"help": "walk the scans to check the cache is current: auto (where data.source exists; a node holding only its cache shards trusts the recorded fingerprint), always, never"})

    def __post_init__(self) -> None:
        self.grid, self.unit_size = tuple(self.grid), tuple(self.unit_size)
        check_source(self.source)
        check_sources_option(self.check_sources)
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
    return DataCache(Path(config.cache_dir) / "store", builder, check_sources=config.check_sources,
                     source_root=source_path(config.source, config.cache_dir))


@dataclass
class _Shard:
    """The part of the corpus in one cache shard: its scans' entries and its windows ``(scan, start)``."""

    first: int  # index of its first scan in the cache
    entries: list[dict[str, Any]]
    items: list[tuple[int, int]]


class FMRIWindows(torch.utils.data.Dataset):
    """Windows of cached scans (see the module docstring).

    The scans are grouped into cache shards (:mod:`~foundation.modalities.fmri.cache`) and the window list is
    split the same way (``windows-....json`` holds the fingerprint and the windows per shard,
    ``windows-....<k>.json`` the starts of shard ``k``'s scans). The dataset reads a shard's entries, window
    starts and masks the first time an item of it is read, so a rank under ``train.shard_assignment: rank`` never
    loads another rank's part of the index; ``scans``, ``items`` and ``index`` read every shard, on first use.
    """

    config_class = FMRIWindowsConfig
    collate = staticmethod(torch.utils.data.default_collate)

    @classmethod
    def windows_file(cls, config: FMRIWindowsConfig, shard: int | None = None) -> Path:
        """The window list's head (``shard`` None) or the window starts of cache shard ``shard``."""
        stem = f"windows-{config.selection}-k{config.top_k}-s{config.seed}-w{config.window}"
        return Path(config.cache_dir) / (f"{stem}.json" if shard is None else f"{stem}.{shard:05d}.json")

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
        report = cache.prepare(lambda: find_scans(source))
        head = cache.head()
        path = cls.windows_file(config)
        if path.is_file() and json.loads(path.read_text()).get("fingerprint") == head["fingerprint"]:
            return report  # windows already chosen from this cache build
        rng = np.random.default_rng(config.seed)
        per_shard = []
        for k in range(len(head["shards"]["first"])):
            windows = []
            for entry in cache.entries([k]):
                n_times = entry["meta"]["n_times"]
                if config.selection == "saliency":
                    vol, mask = open_scan(cache, entry)
                    starts = top_k_windows(vol, mask, config.window, config.top_k, pool=config.saliency_pool,
                                           where=entry["source"])
                elif config.selection == "random":
                    starts = random_windows(n_times, config.window, config.top_k, rng)
                else:
                    starts = list(range(0, n_times - config.window + 1, config.window))
                windows.append([int(v) for v in starts])
            atomic_write_json(cls.windows_file(config, k), {"fingerprint": head["fingerprint"], "windows": windows})
            per_shard.append(sum(len(w) for w in windows))
        atomic_write_json(path, {"fingerprint": head["fingerprint"], "per_shard": per_shard})  # last: marks complete
        return report

    def __init__(self, config: FMRIWindowsConfig) -> None:
        self.config = config
        self.cache = _cache(config)
        # the index without its per-scan entries (split by shard): read per shard, on first use
        self.head = self.cache.head(lambda: find_scans(source_path(config.source, config.cache_dir)))
        path = self.windows_file(config)
        if not path.exists():
            raise DataError(f"{path}: no window list; run FMRIWindows.prepare(config) first (pretrain.py does)")
        chosen = json.loads(path.read_text())
        if chosen.get("fingerprint") != self.head["fingerprint"] or "per_shard" not in chosen:
            raise DataError(f"{path}: the window list belongs to another cache build; run FMRIWindows.prepare(config) again")
        self._first = [int(v) for v in self.head["shards"]["first"]]  # first scan of each shard
        self._per_shard = np.asarray(chosen["per_shard"], np.int64)  # [shards] windows in each shard
        self._ends = np.cumsum(self._per_shard)
        self._shards: dict[int, _Shard] = {}
        self._fg: dict[int, torch.Tensor] = {}  # scan -> [U] foreground of its mask units

    def _shard(self, k: int) -> _Shard:
        """Shard ``k``'s entries and windows (read once)."""
        if k not in self._shards:
            path = self.windows_file(self.config, k)
            if not path.is_file():
                raise DataError(f"{path}: the window starts of cache shard {k} are missing; copy the file from the "
                                "node that ran FMRIWindows.prepare(config), or run it again")
            windows = json.loads(path.read_text())
            entries = self.cache.entries([k])
            if windows.get("fingerprint") != self.head["fingerprint"] or len(windows["windows"]) != len(entries):
                raise DataError(f"{path}: the window starts belong to another cache build; run "
                                "FMRIWindows.prepare(config) again")
            first = self._first[k]
            items = [(first + j, int(s)) for j, starts in enumerate(windows["windows"]) for s in starts]
            self._shards[k] = _Shard(first, entries, items)
        return self._shards[k]

    def _entry(self, scan: int) -> dict[str, Any]:
        k = int(np.searchsorted(self._first, scan, side="right")) - 1
        shard = self._shard(k)
        return shard.entries[scan - shard.first]

    def _foreground(self, scan: int, entry: dict[str, Any]) -> torch.Tensor:
        """[U] bool: which mask units of a window of ``scan`` hold brain voxels (read once per scan)."""
        if scan not in self._fg:
            _, mask = open_scan(self.cache, entry)
            if tuple(mask.shape) != self.config.grid:
                raise DataError(f"{self.cache.folder}: cached grid {tuple(mask.shape)} != data.grid "
                                f"{self.config.grid}; run FMRIWindows.prepare(config) or fix data.grid")
            ut = self.config.window // self.config.unit_size[0]
            self._fg[scan] = torch.from_numpy(np.tile(unit_foreground(mask, self.config.unit_size[1:]), ut))
        return self._fg[scan]

    @functools.cached_property
    def index(self) -> dict[str, Any]:
        """The whole cache index, every scan's entry included (read on first use)."""
        return self.cache.index()

    @functools.cached_property
    def scans(self) -> list[dict[str, Any]]:
        """Every scan's index entry (reads every shard's entries, on first use)."""
        return [e for k in range(len(self._first)) for e in self._shard(k).entries]

    @functools.cached_property
    def items(self) -> list[tuple[int, int]]:
        """``(scan, start)`` of every window, in item order (reads every shard's windows, on first use)."""
        return [it for k in range(len(self._first)) for it in self._shard(k).items]

    def shard_map(self) -> ShardMap:
        """Which cache shard each window lives in (its scan's: a scan lies whole in one shard) and each shard's
        files (its scans' volumes and masks, its index entries, its window starts), for
        ``train.shard_assignment: rank``. Reads no entry: the windows per shard come from the window list's head."""
        files = self.cache.shard_files()
        files = tuple(held + (self.windows_file(self.config, k),) for k, held in enumerate(files))
        item_shard = np.repeat(np.arange(len(self._per_shard), dtype=np.int64), self._per_shard)
        return ShardMap(item_shard, files, str(self.cache.folder))

    def label(self, scan: int) -> Any:
        row = self._entry(scan)["meta"].get("label")
        if row is None:
            return -1
        if self.config.label_column not in row:
            raise DataError(f"labels table has no column {self.config.label_column!r} (columns: {sorted(row)}); set data.label_column")
        value = float(row[self.config.label_column])
        return int(value) if value.is_integer() else value

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} outside the {len(self)} windows")
        k = int(np.searchsorted(self._ends, i, side="right"))
        shard = self._shard(k)
        scan, start = shard.items[i - int(self._ends[k] - self._per_shard[k])]
        entry = shard.entries[scan - shard.first]
        vol, _ = open_scan(self.cache, entry)
        x = torch.from_numpy(np.asarray(vol[start:start + self.config.window], dtype=np.float32) * entry["meta"]["scale"])
        lab = self.label(scan)
        return {
            "x": x.unsqueeze(0),  # [W, Z, Y, X] -> [1, W, Z, Y, X]
            "unit_fg": self._foreground(scan, entry),
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
        return (f"{self.head['shards']['sources']} fMRI scans ({src}; {left} left out), grid {c.grid} at {c.voxel_size} mm, "
                f"TR {c.tr} s, {len(self)} windows of {c.window} frames ({c.selection}, k={c.top_k}).")
