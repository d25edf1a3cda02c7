"""The multi-task ultrasound dataset: challenge CSVs -> validated records -> cached resized arrays -> batches.

``prepare(config)`` (once per node, see :func:`foundation.data.protocol.prepare_dataset`) generates the
demo corpus when ``source: demo`` and builds the cache (:mod:`.cache`: every image of the selected tasks,
all splits, fitted to ``image_size x image_size`` as uint8 in a ``.npy`` memmap, segmentation masks
alongside); records whose files are unreadable are left out and listed in the cache's ``report.json``.
The dataset then takes its records from the cache, not the CSVs: the global table ``records.npy`` (task, patient,
cache row of every record) for the patient split, the task pools and the item -> shard map, and each record's
fields from the entry file of its shard, read when one of its records is first sampled. The CSVs are read (and
every image stat-ed) only to prove the cache current: ``data.check_sources`` ``auto`` does it where the CSV folder
exists and trusts the recorded fingerprint on a node without it (one log line), ``always``, ``never``.

One item of the dataset is one whole batch drawn by the task sampler (single-task or
mixed), so the engine's micro-batch of k items concatenates k planned batches
(``collate``). Batch layout (B images, S = image_size, P = most keypoints of any task):

- ``image`` [B, 3, S, S] float in [0, 1]; ``task`` [B] index into the task table;
- ``label`` [B] class (-1: not a classification sample);
- ``mask`` [B, S, S] int16 class per pixel (-1 everywhere: not a segmentation sample);
- ``box`` [B, 4] (x_min, y_min, x_max, y_max) / S; ``box_state`` [B]: 1 object, 0 negative, -1 n/a;
- ``points`` [B, P, 2] (x, y) / S; ``point_valid`` [B, P];
- ``index`` [B] record index.

Augmentation defaults (zoom 0.15, shift 0.05, intensity 0.15) are ours (unverified against the baseline).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from foundation.data.cache import DataCache, ShardMap, check_sources_option
from foundation.data.demo import check_source, demo_folder, is_demo, source_path
from foundation.errors import ConfigError, DataError
from foundation.modalities.ultrasound.augment import Geometry, fit_geometry, jitter_intensity, random_geometry, warp
from foundation.modalities.ultrasound.cache import RECORDS, UltrasoundCacheBuilder, meta_record
from foundation.modalities.ultrasound.csv_reader import Record, read_csv_folder
from foundation.modalities.ultrasound.sampler import SAMPLING_MODES, BatchPlanner
from foundation.modalities.ultrasound.tasks import TaskSpec, task_table

def image_preprocessing(config: UltrasoundDatasetConfig) -> dict[str, Any]:
    """The input contract of images read with ``config``: side, resize rule, channels, range, normalisation."""
    return {"modality": "ultrasound", "image_size": int(config.image_size),
            "resize": "letterbox (aspect kept, zero pad)" if config.keep_aspect else "stretched to a square",
            "channels": "RGB (grey images repeated)", "input_range": "[0, 1] (uint8 / 255)",
            "normalisation": "ImageNet mean/std, applied inside the model"}


__all__ = ["UltrasoundDatasetConfig", "UltrasoundDataset", "collate_batches", "split_records", "image_preprocessing"]


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class UltrasoundDatasetConfig:
    """Where the CSVs are, which tasks and split, image geometry, sampling and augmentation."""

    source: str = field(default="demo", metadata=_h("folder of the challenge CSVs (paths in them are relative to it), or 'demo' to generate the demo corpus"))
    demo_images_per_task: int = field(default=24, metadata=_h("demo corpus: images per task"))
    demo_seed: int = field(default=0, metadata=_h("demo corpus: seed"))
    tasks: tuple[str, ...] = field(default=(), metadata=_h("task table (empty: all 27 built-in + extra tasks); must match the model's"))
    extra_tasks: dict[str, Any] = field(default_factory=dict, metadata=_h("user tasks: id -> {type, num_classes, num_points, flip_safe}"))
    train_tasks: tuple[str, ...] = field(default=(), metadata=_h("tasks to read and train on (empty: the whole table); e.g. one task for a single-task model"))
    split: str = field(default="train", metadata=_h("train | val | all: patient-disjoint split of every task"))
    val_fraction: float = field(default=0.25, metadata=_h("share of patients (groups) per task held out as val"))
    split_seed: int = field(default=0, metadata=_h("seed of the patient split"))
    image_size: int = field(default=256, metadata=_h("network input side S"))
    keep_aspect: bool = field(default=False, metadata=_h("letterbox (keep the aspect ratio, pad) instead of stretching"))
    batch_size: int = field(default=8, metadata=_h("images per planned batch (one dataset item)"))
    sampling: str = field(default="uniform", metadata=_h("task sampling: uniform | proportional | temperature"))
    temperature: float = field(default=2.0, metadata=_h("tau of temperature sampling (p ~ n^(1/tau))"))
    mixed_tasks: bool = field(default=False, metadata=_h("draw a task per image (needed by GradNorm) instead of per batch"))
    augment: bool = field(default=True, metadata=_h("random zoom/shift/flip and intensity jitter (split train only)"))
    zoom: float = field(default=0.15, metadata=_h("maximum zoom-in minus one"))
    shift: float = field(default=0.05, metadata=_h("maximum shift as a fraction of S"))
    intensity: float = field(default=0.15, metadata=_h("brightness / contrast / gamma jitter strength"))
    flip: bool = field(default=True, metadata=_h("horizontal flips for tasks whose spec is flip_safe"))
    cache_dir: str = field(default="runs/cache/ultrasound", metadata=_h("folder of the resized-array cache; the demo corpus goes to <cache_dir>-demo"))
    check_sources: str = field(default="auto", metadata=_h("read the CSVs and stat the images to check the cache is current: auto (where the CSV folder exists; a node holding only its cache shards trusts the recorded fingerprint), always, never"))

    def __post_init__(self) -> None:
        check_source(self.source)
        check_sources_option(self.check_sources)
        if self.split not in ("train", "val", "all"):
            raise ConfigError(f"data.split must be train, val or all, got {self.split!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"data.sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("image_size", "batch_size", "demo_images_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % 32:
            raise ConfigError(f"data.image_size must be a multiple of 32 (the backbone's stride), got {self.image_size}")
        if self.temperature <= 0 or self.zoom < 0 or self.shift < 0 or self.intensity < 0:
            raise ConfigError("data.temperature must be > 0 and data.zoom, data.shift, data.intensity >= 0")
        task_table(self.tasks, self.extra_tasks, "data")
        if self.train_tasks:
            task_table(self.train_tasks, self.extra_tasks, "data.train_tasks")


def split_records(records: list[Record], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Patient-disjoint train / val indices, split within each task (a task of one patient stays in train)."""
    return split_rows([r.task_id for r in records], [r.group for r in records], val_fraction, seed)


def split_rows(tasks: Sequence[Any], groups: Sequence[str], val_fraction: float,
               seed: int) -> tuple[list[int], list[int]]:
    """:func:`split_records` over each record's task and patient (group) alone.

    Args:
        tasks: [records] task of each record (any hashable).
        groups: [records] patient of each record.
    """
    from foundation.data.splits import group_split

    train, val = [], []
    by_task: dict[Any, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    for idx in by_task.values():
        members = [groups[i] for i in idx]
        if len(set(members)) < 2:
            train.extend(idx)
            continue
        tr, te = group_split(members, val_fraction, seed)
        train.extend(idx[j] for j in tr)
        val.extend(idx[j] for j in te)
    return sorted(train), sorted(val)


def collate_batches(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate planned batches along the batch axis."""
    return {k: torch.cat([it[k] for it in items]) for k in items[0]}


def _cache(config: UltrasoundDatasetConfig) -> DataCache:
    table = task_table(config.tasks, config.extra_tasks, "data")
    builder = UltrasoundCacheBuilder(table, config.image_size, config.keep_aspect, config.train_tasks or tuple(table))
    return DataCache(config.cache_dir, builder, check_sources=config.check_sources,
                     source_root=source_path(config.source, config.cache_dir, inside="csv_files"))


class UltrasoundDataset(torch.utils.data.Dataset):
    """Multi-task ultrasound batches from challenge CSVs (see the module docstring for the layout)."""

    config_class = UltrasoundDatasetConfig
    collate = staticmethod(collate_batches)

    def __init__(self, config: UltrasoundDatasetConfig) -> None:
        self.config = config
        self.table: dict[str, TaskSpec] = task_table(config.tasks, config.extra_tasks, "data")
        self.task_ids = list(self.table)
        self.max_points = max([s.num_points for s in self.table.values()] + [1])
        cache = _cache(config)
        # current for the CSV records (they are read and their images stat-ed where the CSV folder is visible, or
        # with check_sources=always); a node without them trusts the recorded fingerprint. Either way the records
        # come from the cache: the global table (task, patient, row of every record) and, per shard, the entries
        head = cache.head(lambda: self._read(config))
        self._cache = cache
        table = np.load(cache.folder / RECORDS) if (cache.folder / RECORDS).is_file() else None
        if table is None or "records" not in head:
            raise DataError(f"{cache.folder / RECORDS}: the ultrasound cache's record table is missing; copy it "
                            "from the node that built the cache (every node needs it), or delete the folder and run "
                            "the dataset's prepare(config) where the CSVs are")
        names = list(head["settings"]["tasks"])
        missing = sorted(set(config.train_tasks or self.table) - {names[t] for t in np.unique(table[:, 0])})
        if missing:
            raise DataError(f"{cache.folder}: no records of task(s) {', '.join(missing)} in the cache; add their "
                            "CSVs or leave them out of data.train_tasks / data.tasks")
        chosen = np.arange(len(table))
        if config.split != "all":
            patient = [f"{g:012d}" for g in table[:, 1]]  # codes in the patients' sorted order: the same split
            train, val = split_rows(table[:, 0].tolist(), patient, config.val_fraction, config.split_seed)
            chosen = np.asarray(train if config.split == "train" else val, np.int64)
        chosen = chosen[table[chosen, 2] >= 0]  # records left out of the cache are not served
        self.rows = table[chosen, 2].astype(np.int64)  # [records of the split] cache row of record j
        self.record_tasks = [names[t] for t in table[chosen, 0]]  # [records of the split] task id of record j
        self._shard_of = cache.shard_map(self.rows).item_shard  # [records of the split] cache shard of record j
        self._entries: dict[int, dict[int, Record]] = {}  # shard -> {row: record}, read on first use
        self._all: list[Record] | None = None
        self.cache = {name: cache.array(name) for name in ("images", "masks", "sizes")}
        by_task: dict[str, list[int]] = {}
        for j, t in enumerate(self.record_tasks):
            by_task.setdefault(t, []).append(j)
        self.by_task = by_task
        self.planner = BatchPlanner(by_task, config.batch_size, config.sampling, config.temperature,
                                    config.mixed_tasks)
        self._n_items = len(self.planner)  # planned batches per epoch, whatever shards the planner draws from

    @property
    def report(self) -> dict[str, Any]:
        """The cache's ``report.json`` (every record, kept or left out and why), read when asked for."""
        return self._cache.report()

    def record(self, j: int) -> Record:
        """Record ``j`` of the split, from the entries of its cache shard (read the first time one is asked for)."""
        row, shard = int(self.rows[j]), int(self._shard_of[j])
        if shard not in self._entries:
            self._entries[shard] = {int(e["key"]): meta_record(e["meta"]) for e in self._cache.entries([shard])}
        return self._entries[shard][row]

    @property
    def records(self) -> list[Record]:
        """Every record of the split (reads every shard's entries: fine-tuning, explanations, not pretraining)."""
        if self._all is None:
            self._all = [self.record(j) for j in range(len(self.rows))]
        return self._all

    def shard_map(self) -> ShardMap:
        """Which cache shard each planned batch (item) stands for, and each shard's files
        (``train.shard_assignment: rank``).

        Item ``i`` stands for the records ``[i * B, (i + 1) * B)`` in cache order (B = ``data.batch_size``) and
        lives in the shard of the first of them, so each shard holds about its records / B items. Once the sampler
        has given this rank its shards, :meth:`use_shards` makes the planner draw from their records only.
        """
        first = self.rows[np.minimum(np.arange(self._n_items) * self.config.batch_size, len(self.rows) - 1)]
        return self._cache.shard_map(first)

    def use_shards(self, shards: Sequence[int]) -> None:
        """Plan every batch from the records in cache shards ``shards`` only (this rank's, under
        ``train.shard_assignment: rank``), with the task probabilities of their own task counts: the task
        sampling is balanced within the rank's shards (see the README). The item count stays the corpus's.

        Raises:
            DataError: the shards hold no record of the split.
        """
        mine = np.isin(self._shard_of, list(shards))
        by_task: dict[str, list[int]] = {}
        for i in np.flatnonzero(mine):
            by_task.setdefault(self.record_tasks[int(i)], []).append(int(i))
        if not by_task:
            raise DataError(f"{self._cache.folder}: cache shards {list(shards)} hold no record of split "
                            f"{self.config.split!r}; use fewer ranks or set train.shard_assignment=global")
        self.by_task = by_task
        self.planner = BatchPlanner(by_task, self.config.batch_size, self.config.sampling, self.config.temperature,
                                    self.config.mixed_tasks)

    @classmethod
    def prepare(cls, config: UltrasoundDatasetConfig) -> dict[str, Any]:
        """Generate the demo corpus (``source: demo``) and build the cache unless it is up to date.

        Returns:
            The cache report (every record, kept or left out and why).
        """
        if is_demo(config.source):
            from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus

            make_demo_corpus(demo_folder(config.cache_dir), task_table(config.tasks, config.extra_tasks, "data"),
                             config.demo_images_per_task, config.demo_seed)
        return _cache(config).prepare(lambda: cls._read(config))

    @staticmethod
    def _read(config: UltrasoundDatasetConfig) -> list[Record]:
        """Every record of the selected tasks (all splits)."""
        table = task_table(config.tasks, config.extra_tasks, "data")
        keep = set(config.train_tasks or table)
        root = source_path(config.source, config.cache_dir, inside="csv_files")
        if not root.is_dir() or not any(root.glob("*.csv")):
            hint = "run UltrasoundDataset.prepare(config) first" if is_demo(config.source) else \
                "point data.source at the challenge's csv_files folder, or set data.source: demo"
            raise DataError(f"data.source {config.source!r}: no CSV files in {str(root)!r}; {hint}")
        # with a task subset, rows of the other challenge tasks are left out on purpose (unknown ids still raise)
        records = [r for r in read_csv_folder(root, table, strict_tasks=not config.tasks) if r.task_id in keep]
        missing = sorted(keep - {r.task_id for r in records})
        if missing:
            raise DataError(f"data.source {str(root)!r}: no rows for task(s) {', '.join(missing)}; add their "
                            "CSVs or leave them out of data.train_tasks / data.tasks")
        return records

    def __len__(self) -> int:
        return self._n_items

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """One planned batch, drawn from a generator seeded by torch's global RNG and ``i``.

        Every rank seeds the global RNG alike (and a resumed run restores it), while the
        distributed sampler gives ranks different ``i``: so ranks draw different batches, each
        epoch draws new ones, and a resumed run draws the batches the uninterrupted one would.
        """
        seed = (int(torch.randint(0, 2**62, (1,))) + i * 0x9E3779B97F4A7C15) % 2**63
        gen = torch.Generator().manual_seed(seed)
        train = self.config.split == "train"
        return collate_batches([self.sample(j, train=train, generator=gen) for j in self.planner.plan(gen)])

    def geometry(self, j: int) -> Geometry:
        """The original -> network map of record ``j`` (without augmentation)."""
        H, W = (int(v) for v in self.cache["sizes"][self.rows[j]])
        return fit_geometry(H, W, self.config.image_size, self.config.keep_aspect)

    def sample(self, j: int, train: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Record ``j`` as a batch of one (augmented when ``train`` and ``augment``, drawing from ``generator``)."""
        c, r = self.config, self.record(j)
        spec, S, P = self.table[r.task_id], c.image_size, self.max_points
        base = self.geometry(j)
        image = torch.from_numpy(np.array(self.cache["images"][self.rows[j]])).permute(2, 0, 1).float() / 255  # [S,S,3] -> [3,S,S]
        pts = torch.tensor(r.points, dtype=torch.float32).reshape(-1, 2)
        box = torch.tensor(r.box, dtype=torch.float32) if r.box is not None else None
        inside = torch.cat([pts, box.view(2, 2)]) if box is not None else pts
        H, W = base.height, base.width
        if box is not None and (box[2] > W or box[3] > H):
            raise DataError(f"{r.source}: box {r.box} reaches outside the {W}x{H} image")
        if len(pts) and bool(((pts < 0) | (pts > torch.tensor([W, H]))).any()):
            raise DataError(f"{r.source}: keypoints {r.points} fall outside the {W}x{H} image")
        g = base
        if train and c.augment:
            identity = Geometry(1.0, 0.0, 1.0, 0.0, S, S, S)
            aug = random_geometry(identity, flip=c.flip and spec.flip_safe, zoom=c.zoom, shift=c.shift,
                                  generator=generator, keep_inside=base.to_net(inside) if len(inside) else None)
            image = jitter_intensity(warp(image, aug), c.intensity, generator)
            g = base.then(aug.sx, aug.ox, aug.sy, aug.oy)
        mask = torch.full((S, S), -1, dtype=torch.int16)  # int16: a quarter of the collate traffic of int64
        if spec.type == "segmentation":
            m = torch.from_numpy(np.array(self.cache["masks"][self.rows[j]])).to(torch.int16)
            if train and c.augment:
                m = warp(m[None].float(), aug, mode="nearest")[0].to(torch.int16)
            mask = m
        points = torch.zeros(P, 2)
        valid = torch.zeros(P, dtype=torch.bool)
        if len(pts):
            points[: len(pts)] = g.to_net(pts) / S
            valid[: len(pts)] = True
        box_state, box_net = -1, torch.zeros(4)
        if spec.type == "detection":
            box_state = 0 if box is None else 1
            if box is not None:
                box_net = g.box_to_net(box) / S
        return {
            "image": image[None], "task": torch.tensor([self.task_ids.index(r.task_id)]),
            "label": torch.tensor([r.label]), "mask": mask[None], "box": box_net[None],
            "box_state": torch.tensor([box_state]), "points": points[None], "point_valid": valid[None],
            "index": torch.tensor([j]),
        }

    def preprocessing(self) -> dict[str, Any]:
        """What a model trained on these images expects of new ones (goes into config.json and the card)."""
        return image_preprocessing(self.config)

    def groups(self) -> list[str]:
        """Not defined: an item is a planned batch of several patients.

        Raises:
            ConfigError: always; split with ``data.split`` (patient-disjoint within each task), or fine-tune on
                ``ultrasound-images``, whose items are single images with their patient.
        """
        raise ConfigError("ultrasound-csv: an item is a planned batch of several patients, so items have no group; "
                          "use data.split (train | val, patient-disjoint) or the ultrasound-images dataset")

    def describe(self) -> str:
        """One paragraph for the model card."""
        c = self.config
        types: dict[str, int] = {}
        for t in self.record_tasks:
            types[self.table[t].type] = types.get(self.table[t].type, 0) + 1
        parts = ", ".join(f"{n} {t}" for t, n in sorted(types.items()))
        src = "the generated demo corpus" if is_demo(c.source) else c.source
        return (f"{len(self.rows)} ultrasound images ({parts}) over {len(self.by_task)} tasks from "
                f"{src} (split {c.split}; {self.report['n_left_out']} left out), {c.image_size}x{c.image_size} "
                f"{'letterboxed' if c.keep_aspect else 'stretched'}, {c.sampling} task sampling"
                f"{', mixed-task batches' if c.mixed_tasks else ''}.")
