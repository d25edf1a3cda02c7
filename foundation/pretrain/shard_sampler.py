"""The data order of ``train.shard_assignment: rank``: each rank reads only the cache shards assigned to it.

Every rank owns a contiguous run of shards (:func:`foundation.data.shard_plan.assign_shards`, balanced by items)
and shuffles within them each epoch, so a rank maps about ``1 / world_size`` of the shards and a node needs only
its ranks' shard files. The order is built from two seeded pieces, neither of which depends on the rank count:

- each shard ``k`` has its own permutation of its items per epoch (seeded ``[seed, epoch, k]``);
- a rank interleaves the permutations of its shards at random (a shuffled sequence of shard labels), taking each
  shard's items in its permutation's order. The interleaving and the shard permutations together make a uniform
  random order of the rank's items.

So the items of shard ``k`` read so far are always a prefix of its permutation, and the data position is one
count per shard (**per-shard progress**). A stretch of an epoch read on one rank count is a *segment*: it starts
at the epoch's start (progress 0) or at a resume on another rank count (progress as saved), its ``base``.

**Equal steps on every rank.** Ranks own different numbers of items (shards are whole), yet every rank must run
the same number of micro-batches or the collectives hang. Every rank therefore yields ``L`` indices, the largest
rank's remaining items rounded up to a whole micro-batch, and a rank with fewer **pads by wrap-around**: it
re-reads its own segment's order from the start (its shards' epoch order when it has nothing left). Padding was
chosen over cutting every rank to the shortest one's count because cutting would skip up to a shard's worth of
items on the longer ranks every epoch, while padding reads every item of the epoch and repeats at most the
imbalance (one shard at most with equal shards) plus less than a micro-batch per rank. Padded reads are not
progress: only real reads advance a shard's count.

**Resume.** A checkpoint stores the segment (``epoch``, ``base``, the rank count, the indices each rank has
taken) and the progress. On the same rank count the segment continues where it stopped, the same order as an
uninterrupted run; on another, a new segment starts from the saved progress: every item of the epoch not yet read
is read once, none is read twice (except padding), in another order than an uninterrupted run.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from foundation.data.shard_plan import assign_shards

__all__ = ["ShardLocalSampler"]


class ShardLocalSampler(Sampler[int]):
    """Indices of the items in this rank's shards, shuffled within them per epoch, padded to a common length.

    Args:
        item_shard: [N] the shard of each dataset item (:attr:`foundation.data.shard_plan.ShardMap.item_shard`).
        n_shards: shards in the cache (shards without items of the dataset included).
        num_replicas: world size.
        rank: this process's rank.
        seed: base seed of the shuffles.
        batch: micro-batch size; every rank yields a whole number of micro-batches.
        where: the cache, for messages.

    Raises:
        ValueError: a rank outside the world, an empty dataset or a batch < 1.
        DataError: fewer shards holding items than ranks.
    """

    def __init__(self, item_shard: Sequence[int] | np.ndarray, n_shards: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, batch: int = 1, where: str = "the cache") -> None:
        item_shard = np.asarray(item_shard, dtype=np.int64)
        if len(item_shard) < 1:
            raise ValueError("sampler over an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if item_shard.min() < 0 or item_shard.max() >= n_shards:
            raise ValueError(f"item shards outside [0, {n_shards})")
        self.num_replicas, self.rank, self.seed, self.batch = num_replicas, rank, seed, batch
        self.n_items, self.n_shards = len(item_shard), n_shards
        self.item_shard = item_shard
        self.counts = np.bincount(item_shard, minlength=n_shards).astype(np.int64)  # [S] items per shard
        by_shard = np.argsort(item_shard, kind="stable")  # dataset indices grouped by shard, ascending within
        self.members = np.split(by_shard, np.cumsum(self.counts)[:-1])  # [S] arrays of dataset indices
        self.runs = assign_shards(self.counts, num_replicas, where)  # rank -> its shards
        self.epoch, self.base, self.taken = 0, np.zeros(n_shards, np.int64), 0

    @property
    def shards(self) -> range:
        """The shards this rank reads."""
        return self.runs[self.rank]

    def set_epoch(self, epoch: int, base: Sequence[int] | None = None, taken: int = 0) -> None:
        """Start a segment of epoch ``epoch`` at per-shard progress ``base``, this rank having taken ``taken``.

        Args:
            epoch: the epoch (selects the shard permutations).
            base: [S] items of each shard read before this segment (None: none, the epoch's start).
            taken: indices each rank has already taken in this segment (a resume on the same rank count).

        Raises:
            ValueError: a ``base`` of the wrong length or outside ``[0, items of the shard]``, or ``taken`` past the
                segment's length.
        """
        base = np.zeros(self.n_shards, np.int64) if base is None else np.asarray(base, dtype=np.int64)
        if base.shape != (self.n_shards,) or (base < 0).any() or (base > self.counts).any():
            raise ValueError(f"per-shard progress {base.tolist()} does not fit shards of {self.counts.tolist()} items")
        self.epoch, self.base = epoch, base
        if not 0 <= taken <= self.length:
            raise ValueError(f"taken {taken} outside [0, {self.length}]")
        self.taken = taken

    def permutation(self, k: int) -> np.ndarray:
        """Shard ``k``'s items (dataset indices) in this epoch's order."""
        return np.random.default_rng([self.seed, self.epoch, k]).permutation(self.members[k])

    def remaining(self, rank: int) -> int:
        """Items of ``rank``'s shards not read before this segment."""
        run = self.runs[rank]
        return int((self.counts[run.start:run.stop] - self.base[run.start:run.stop]).sum())

    @property
    def length(self) -> int:
        """Indices every rank yields in this segment: the largest remainder rounded up to a whole micro-batch."""
        longest = max(self.remaining(r) for r in range(self.num_replicas))
        return -(-longest // self.batch) * self.batch

    def stream(self, rank: int) -> np.ndarray:
        """[remaining(rank)] the segment's real reads of ``rank``: its shards' unread items, interleaved."""
        rest = [self.permutation(k)[self.base[k]:] for k in self.runs[rank]]
        labels = np.repeat(np.arange(len(rest)), [len(p) for p in rest])
        rng = np.random.default_rng([self.seed, self.epoch, self.num_replicas, rank, int(self.base.sum())])
        rng.shuffle(labels)
        out = np.empty(len(labels), np.int64)
        for j, part in enumerate(rest):
            out[labels == j] = part  # the j-th shard's unread items, in its permutation's order
        return out

    def order(self, rank: int) -> np.ndarray:
        """[length] what ``rank`` reads in this segment: its stream, then padding by wrap-around."""
        real = self.stream(rank)
        pad = self.length - len(real)
        if pad == 0:
            return real
        source = real if len(real) else np.concatenate([self.permutation(k) for k in self.runs[rank]])
        return np.concatenate([real, np.resize(source, pad)])  # np.resize repeats the source cyclically

    def progress(self, taken: int) -> np.ndarray:
        """[S] items of each shard read once every rank has taken ``taken`` indices of this segment (padding
        excluded): what a checkpoint stores."""
        out = self.base.copy()
        for r in range(self.num_replicas):
            real = self.stream(r)[:taken]
            out += np.bincount(self.item_shard[real], minlength=self.n_shards)
        return out

    def fraction(self, taken: int) -> float:
        """How far into the epoch the job is after ``taken`` indices per rank (padded reads counted as reads)."""
        done, total = int(self.base.sum()), self.length * self.num_replicas
        return min(1.0, (done + taken * self.num_replicas) / max(done + total, 1))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.rank)[self.taken:].tolist())

    def __len__(self) -> int:
        return self.length - self.taken
