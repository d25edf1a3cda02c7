"""Which cache shards each rank reads under ``train.shard_assignment: rank``, and the files a node needs.

A sharded cache (:mod:`foundation.data.cache`) stores its per-item arrays in shards of ``shard_items`` rows. A
dataset that reads such a cache describes its items' shards with a :class:`ShardMap` (which shard each of its
items lives in, and the files that hold each shard). :func:`assign_shards` cuts the shards into one contiguous run
per rank, balanced by the dataset's items, so a rank maps only its own run and a node needs only the shard files of
its ranks (:func:`check_shard_files`).
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundation.errors import DataError

__all__ = ["ShardMap", "assign_shards", "check_shard_files"]


@dataclass(frozen=True)
class ShardMap:
    """Where a dataset's items live in a sharded cache.

    Attributes:
        item_shard: [N] int64, the shard of each dataset item (item ``i`` of the dataset, not the cache row).
        files: per shard ``k`` (``0 <= k < n_shards``), the files that hold its rows (one per per-item array).
        where: the cache folder, for messages.
    """

    item_shard: np.ndarray
    files: tuple[tuple[Path, ...], ...]
    where: str = ""

    @property
    def n_shards(self) -> int:
        return len(self.files)

    def counts(self) -> np.ndarray:
        """[n_shards] int64: the dataset's items in each shard."""
        return np.bincount(self.item_shard, minlength=self.n_shards).astype(np.int64)


def assign_shards(rows: Sequence[int], world_size: int, where: str = "the cache") -> list[range]:
    """Cut shards ``0 .. S-1`` into ``world_size`` contiguous runs, one per rank, balanced by rows.

    Cut ``r`` (between rank ``r-1`` and rank ``r``) is the shard boundary whose cumulative row count is closest to
    ``r / world_size`` of all rows, while every rank keeps at least one shard with rows. With equal shards the runs
    differ by at most one shard; the assignment depends only on ``rows`` and ``world_size``.

    Args:
        rows: [S] the dataset's items in each shard.
        world_size: ranks.
        where: the cache, for messages.

    Returns:
        ``world_size`` ranges of shard indices (rank ``r`` reads ``runs[r]``).

    Raises:
        DataError: fewer shards holding items than ranks.
    """
    rows = np.asarray(rows, dtype=np.int64)
    useful = int((rows > 0).sum())
    if useful < world_size:
        raise DataError(f"{where}: {useful} shard(s) hold items, fewer than the {world_size} ranks; under "
                        "train.shard_assignment=rank every rank needs a shard of its own: use fewer ranks, rebuild "
                        "the cache with smaller shards, or set train.shard_assignment=global")
    ends = np.cumsum(rows)  # ends[k]: rows in shards 0..k
    total = int(ends[-1])
    nonempty = np.flatnonzero(rows > 0)
    cuts = [0]
    for r in range(1, world_size):
        # the cut goes after a shard; it must leave a non-empty shard to this rank and one to each rank after it
        lo = int(nonempty[np.searchsorted(nonempty, cuts[-1])]) + 1  # past the next non-empty shard
        hi = int(nonempty[len(nonempty) - (world_size - r)])  # at most up to the (W-r)-th last non-empty shard
        candidates = np.arange(lo, hi + 1)
        target = total * r / world_size
        cuts.append(int(candidates[np.argmin(np.abs(ends[candidates - 1] - target))]))
    cuts.append(len(rows))
    return [range(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def check_shard_files(shard_map: ShardMap, shards: Sequence[int], rank: int, world_size: int) -> None:
    """Refuse to start when a shard file this rank reads is absent from this node.

    Raises:
        DataError: naming the first missing file, the rank's shards and what to do.
    """
    for k in shards:
        for path in shard_map.files[k]:
            if not Path(path).is_file():
                first, last = shards[0], shards[-1]
                raise DataError(
                    f"{path}: missing on this node ({socket.gethostname()}); under train.shard_assignment=rank, rank "
                    f"{rank} of {world_size} reads shards {first}-{last} of {shard_map.where}: copy those shard files "
                    f"(every file the dataset's shard_map() lists for them: shards/<array>.{first:05d}.npy to "
                    f".{last:05d}.npy and their entries files; for fMRI, their scans' parts/ files and window "
                    "starts) beside the cache's index.json from the node that built the cache, or set "
                    "train.shard_assignment=global with the whole cache on every "
                    "node")
