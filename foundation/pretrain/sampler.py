"""A distributed sampler that can resume in the middle of an epoch."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(Sampler[int]):
    """Shuffled, rank-sharded indices with per-epoch seeding and a start offset.

    Epoch ``e`` permutes the dataset with a generator seeded ``seed + e``, pads
    (or drops) to a multiple of ``num_replicas`` and gives rank ``r`` every
    ``num_replicas``-th index starting at ``r``, like
    :class:`torch.utils.data.DistributedSampler`. ``set_epoch(e, start=s)`` skips
    the first ``s`` indices of the epoch's order, counted over all ranks together
    (what the job had consumed), and deals the rest out as before, without touching
    the data. A resumed run therefore sees exactly the samples the uninterrupted run
    would, in the same order, even on another number of ranks: the epoch's order does
    not depend on the world size, only its cut among the ranks does (and, with
    ``drop_last``, how many samples at the epoch's end are left over: fewer than
    ``num_replicas``).

    Args:
        length: dataset size.
        num_replicas: world size.
        rank: this process's rank.
        seed: base seed of the shuffle.
        shuffle: permute each epoch (else the natural order).
        drop_last: drop the tail that does not divide evenly (else pad by repeating).
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if length < 1:
            raise ValueError(f"sampler over an empty dataset (length={length})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        if drop_last:
            self.per_rank = length // num_replicas
        else:
            self.per_rank = -(-length // num_replicas)
        if self.per_rank < 1:
            raise ValueError(f"dataset of {length} samples is smaller than the world size {num_replicas}")
        self.total = self.per_rank * num_replicas  # indices dealt per epoch, all ranks together
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` indices (counted over all ranks)."""
        if not 0 <= start <= self.total:
            raise ValueError(f"start {start} outside [0, {self.total}]")
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.total > len(order):
            order += order[: self.total - len(order)]
        rest = order[self.start : self.total]
        # the remainder is dealt out evenly; a tail shorter than num_replicas is dropped, never padded
        return rest[: len(rest) - len(rest) % self.num_replicas][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return (self.total - self.start) // self.num_replicas
