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
    the first ``s`` indices of this rank's share without touching the data, which
    makes a resumed run see exactly the batches the uninterrupted run would.

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
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``start`` indices."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start {start} outside [0, {self.per_rank}]")
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.num_replicas
        if total > len(order):
            order += order[: total - len(order)]
        return order[:total][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
