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
``shards/entries.<k>.json``). The three arrays are then cut into shards
(``shards/<name>.<k>.npy``, read through :class:`~foundation.data.cache.ShardedArray`). A record whose image or mask is missing, unreadable or cut
off, whose image is of one colour, or whose mask does not match its image, is left out and listed in
``report.json`` with the reason; every such reason starts with the CSV file and row that referenced the file.
"""
from __future__ import annotations

import shutil
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

__all__ = ["UltrasoundCacheBuilder", "record_name"]


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


class UltrasoundCacheBuilder(CacheBuilder):
    """CSV records -> fitted uint8 images and masks.

    Args:
        table: the task table (mask class counts).
        image_size: network input side S.
        keep_aspect: letterbox instead of stretching.
    """

    kind = "ultrasound"
    version = "4"  # 4: index entries split by shard; 3: per-image arrays in shards
    item_arrays = ("images", "masks", "sizes")

    def __init__(self, table: dict[str, TaskSpec], image_size: int, keep_aspect: bool) -> None:
        self.table, self.image_size, self.keep_aspect = table, image_size, keep_aspect

    def settings(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "keep_aspect": self.keep_aspect,
                "mask_classes": {t: s.num_classes for t, s in sorted(self.table.items())}}

    def source_name(self, source: Record) -> str:
        return record_name(source)

    def signature(self, source: Record) -> Any:
        return [source.task_id, _signature(source.image), _signature(source.mask)]

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
        return Part({"image": image, "mask": mask, "size": np.asarray([H, W], np.int64)})

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
