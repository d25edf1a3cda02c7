"""The ultrasound image cache: a :class:`~foundation.data.cache.CacheBuilder` for CSV records.

Every record's image is fitted to ``image_size x image_size`` (stretched or letterboxed, see
:func:`~foundation.modalities.ultrasound.augment.fit_geometry`) and stored as uint8; its segmentation mask,
when it has one, is resampled (nearest) alongside. :meth:`UltrasoundCacheBuilder.finalize` stacks them:

==============  ==========================  ==========================================
file            shape / content             meaning
==============  ==========================  ==========================================
images.npy      [N, S, S, 3] uint8          fitted images
masks.npy       [N, S, S] uint8             class per pixel (0 where the record has no mask)
sizes.npy       [N, 2] int64                original (height, width)
==============  ==========================  ==========================================

Row ``i`` belongs to entry ``i`` (the ``i``-th kept record; entries split by shard into
``shards/entries.<k>.json``); an entry's ``meta`` is its record (:func:`record_meta`: task, label, box, points,
patient, file paths, CSV row), so a rank rebuilds the records of its shards from their entry files alone. The
small global table ``records.npy`` [every record, kept or not, 3] int64 holds per record its task (index into the
settings' ``tasks``), its patient (index into the sorted patients of the corpus) and its cache row (-1: left out):
what the patient split, the task pools of the planner and the item -> shard map need of every record, 24 bytes a
record, without the CSVs or ``report.json``. The three arrays are then cut into shards
(``shards/<name>.<k>.npy``, read through :class:`~foundation.data.cache.ShardedArray`). A record whose image or mask is missing, unreadable or cut
off, whose image is of one colour, or whose mask does not match its image, is left out and listed in
``report.json`` with the reason; every such reason starts with the CSV file and row that referenced the file.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.data.cache import PARTS, CacheBuilder, Part, path_signature
from foundation.errors import DataError
from foundation.modalities.ultrasound.augment import fit_geometry, warp
from foundation.modalities.ultrasound.csv_reader import Record
from foundation.modalities.ultrasound.images import read_image, read_mask
from foundation.modalities.ultrasound.tasks import TaskSpec

__all__ = ["UltrasoundCacheBuilder", "record_name", "record_meta", "meta_record", "RECORDS"]

RECORDS = "records.npy"  # the global per-record table (see the module docstring)


def _signature(path: Any) -> Any:
    """:func:`path_signature` of a record's file; a missing file is left to :meth:`read_source` to report."""
    if path is None:
        return None
    try:
        return path_signature(path)
    except DataError:
        return [str(path), "missing"]


def record_name(r: Record) -> str:
    """How the cache report names a record: ``"file.csv:row (image path)"``."""
    return f"{r.source} ({r.image})"


def record_meta(r: Record) -> dict[str, Any]:
    """A record as plain JSON data (an entry's ``meta``); :func:`meta_record` inverts it."""
    return {"image": str(r.image), "image_path": r.image_path, "task": r.task_id, "label": int(r.label),
            "mask": None if r.mask is None else str(r.mask), "mask_path": r.mask_path,
            "box": None if r.box is None else [float(v) for v in r.box],
            "points": [[float(x), float(y)] for x, y in r.points], "group": r.group, "source": r.source}


def meta_record(meta: dict[str, Any]) -> Record:
    """The :class:`Record` an entry's ``meta`` was written from."""
    return Record(image=Path(meta["image"]), image_path=meta["image_path"], task_id=meta["task"],
                  label=int(meta["label"]), mask=None if meta["mask"] is None else Path(meta["mask"]),
                  mask_path=meta["mask_path"], box=None if meta["box"] is None else tuple(meta["box"]),
                  points=tuple((float(x), float(y)) for x, y in meta["points"]), group=meta["group"],
                  source=meta["source"])


class UltrasoundCacheBuilder(CacheBuilder):
    """CSV records -> fitted uint8 images and masks.

    Args:
        table: the task table (mask class counts).
        image_size: network input side S.
        keep_aspect: letterbox instead of stretching.
        tasks: the tasks whose records the cache holds (default: the whole table).
    """

    kind = "ultrasound"
    version = "5"  # 5: records in the entries, records.npy; 4: index entries split by shard; 3: arrays in shards
    item_arrays = ("images", "masks", "sizes")

    def __init__(self, table: dict[str, TaskSpec], image_size: int, keep_aspect: bool,
                 tasks: Sequence[str] = ()) -> None:
        self.table, self.image_size, self.keep_aspect = table, image_size, keep_aspect
        self.tasks = sorted(tasks or table)

    def settings(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "keep_aspect": self.keep_aspect, "tasks": self.tasks,
                "mask_classes": {t: s.num_classes for t, s in sorted(self.table.items())}}

    def source_name(self, source: Record) -> str:
        return record_name(source)

    def signature(self, source: Record) -> Any:
        """The record's CSV fields (a changed label, box, point or patient changes the cache: it holds them) and
        its files' signatures."""
        meta = record_meta(source)
        return [[meta[k] for k in ("task", "label", "box", "points", "group", "image_path", "mask_path", "source")],
                _signature(source.image), _signature(source.mask)]

    def source_table(self, folder: Path, sources: Sequence[Record], kept: Sequence[int]) -> dict[str, Any]:
        """Write ``records.npy`` (see the module docstring): [records, 3] int64 task, patient, row."""
        patients = sorted({r.group for r in sources})
        code = {g: i for i, g in enumerate(patients)}
        task = {t: i for i, t in enumerate(self.tasks)}
        table = np.asarray([[task[r.task_id], code[r.group], row] for r, row in zip(sources, kept)],
                           np.int64).reshape(-1, 3)
        np.save(folder / RECORDS, table)
        return {"records": {"n": len(table), "patients": len(patients)}}

    def read_source(self, source: Record) -> Part:
        """One record: ``image`` [S, S, 3] uint8, ``mask`` [S, S] uint8, ``size`` [2] int64.

        Raises:
            DataError: naming the CSV file and row first, then the image or mask file and what is wrong.
        """
        try:
            return self._read(source)
        except DataError as err:
            text = str(err)
            raise DataError(text if text.startswith(source.source) else f"{source.source}: {text}") from err

    def _read(self, source: Record) -> Part:
        r, S = source, self.image_size
        img = read_image(r.image)  # [H, W, 3]
        if float(img.max()) - float(img.min()) < 0.5 / 255:
            raise DataError(f"{r.image}: the image is of one colour (every pixel {float(img.flat[0]) * 255:.0f}/255): "
                            "a blank or failed export; replace it or remove the row")
        H, W = img.shape[:2]
        g = fit_geometry(H, W, S, self.keep_aspect)
        image = (warp(torch.from_numpy(img).permute(2, 0, 1), g).permute(1, 2, 0)  # [3, S, S] -> [S, S, 3]
                 .clamp(0, 1).mul(255).round().to(torch.uint8).numpy())
        mask = np.zeros((S, S), np.uint8)
        if r.mask is not None:
            m = read_mask(r.mask, self.table[r.task_id].num_classes)
            if m.shape != (H, W):
                raise DataError(f"{r.source}: mask {r.mask_path!r} is {m.shape[1]}x{m.shape[0]} but the image is "
                                f"{W}x{H}; masks must match their image")
            mask = warp(torch.from_numpy(m)[None].float(), g, mode="nearest")[0].to(torch.uint8).numpy()
        return Part({"image": image, "mask": mask, "size": np.asarray([H, W], np.int64)}, meta=record_meta(r))

    def entry_rows(self, entry: dict[str, Any]) -> tuple[int, int]:
        """Row ``i`` is entry ``i`` (one image per record): the index is split by shard."""
        return int(entry["key"]), 1

    def finalize(self, folder: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack the records' arrays into images.npy, masks.npy and sizes.npy (row i = entry i)."""
        S, n, parts = self.image_size, len(entries), folder / PARTS
        images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (n, S, S, 3))
        masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (n, S, S))
        sizes = np.zeros((n, 2), np.int64)
        for i, e in enumerate(entries):
            images[i] = np.load(parts / f"{e['key']}.image.npy")
            masks[i] = np.load(parts / f"{e['key']}.mask.npy")
            sizes[i] = np.load(parts / f"{e['key']}.size.npy")
        images.flush()
        masks.flush()
        del images, masks
        np.save(folder / "sizes.npy", sizes)
        shutil.rmtree(parts)
        return {}
