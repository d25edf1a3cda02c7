"""``ShardLocalSampler`` (train.shard_assignment: rank): properties in one process, no launcher.

What must hold: each rank reads only its shards; the ranks' real reads of an epoch are every item once; every rank
yields the same whole number of micro-batches; a resume on the same rank count continues the same order; a resume
on another rank count (even twice in one epoch) reads every unread item exactly once.
"""
from __future__ import annotations

import numpy as np
import pytest

from foundation.errors import DataError
from foundation.pretrain.shard_sampler import ShardLocalSampler

# (items, shard size, dataset items kept): full caches and a subset (a subject filter leaves holes in shards)
LAYOUTS = [(103, 10, None), (64, 8, None), (200, 16, "odd-subset")]


def _item_shard(items: int, per: int, subset: str | None) -> tuple[np.ndarray, int]:
    rows = np.arange(items)
    if subset:
        rows = rows[(rows % 3 != 0)]  # a dataset over 2/3 of the cache rows
    return rows // per, -(-items // per)


def _samplers(item_shard, n_shards, world, *, seed=7, batch=4, epoch=0, base=None, taken=0):
    out = [ShardLocalSampler(item_shard, n_shards, world, r, seed=seed, batch=batch) for r in range(world)]
    for s in out:
        s.set_epoch(epoch, base, taken)
    return out


@pytest.mark.parametrize("items,per,subset", LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_an_epoch_reads_every_item_once_each_rank_from_its_own_shards(items, per, subset, world):
    item_shard, n_shards = _item_shard(items, per, subset)
    samplers = _samplers(item_shard, n_shards, world, epoch=2)
    orders = [list(s) for s in samplers]
    lengths = {len(o) for o in orders}
    assert len(lengths) == 1 and lengths.pop() % 4 == 0  # same whole number of micro-batches on every rank
    owned = [set(s.shards) for s in samplers]
    assert all(not (a & b) for i, a in enumerate(owned) for b in owned[i + 1:])  # no shard read by two ranks
    assert set().union(*owned) == set(range(n_shards))
    for s, order in zip(samplers, orders):
        assert set(item_shard[order]) <= set(s.shards)  # padding included: a rank touches only its shards
    real = np.concatenate([s.stream(s.rank) for s in samplers])
    assert sorted(real.tolist()) == list(range(len(item_shard)))  # every item of the epoch exactly once
    # padding: the longest rank's remainder rounded up to a micro-batch; the rest of each order is real reads
    longest = max(len(s.stream(s.rank)) for s in samplers)
    assert len(orders[0]) == -(-longest // 4) * 4
    for s, order in zip(samplers, orders):
        assert order[:len(s.stream(s.rank))] == s.stream(s.rank).tolist()


def test_shards_are_balanced_by_items_and_contiguous():
    sampler = ShardLocalSampler(np.arange(51 * 80) // 80, 51, 8, 0)
    runs = sampler.runs
    assert [r.start for r in runs[1:]] == [r.stop for r in runs[:-1]] and runs[0].start == 0 and runs[-1].stop == 51
    sizes = [len(r) for r in runs]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 51  # 51 shards on 8 ranks: runs of 6 or 7


def test_shuffles_within_shards_differ_per_epoch_and_keep_each_shard_in_its_permutation_order():
    item_shard, n_shards = _item_shard(103, 10, None)
    a, = _samplers(item_shard, n_shards, 1, epoch=0)
    e0 = a.stream(0)
    a.set_epoch(1)
    e1 = a.stream(0)
    assert e0.tolist() != e1.tolist() and sorted(e0.tolist()) == sorted(e1.tolist())
    assert e0.tolist() != sorted(e0.tolist())
    for k in range(n_shards):  # a shard's items come in its permutation's order: progress is a prefix count
        assert e1[item_shard[e1] == k].tolist() == a.permutation(k).tolist()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_resume_on_the_same_rank_count_continues_the_same_order(world):
    item_shard, n_shards = _item_shard(200, 16, "odd-subset")
    whole = [list(s) for s in _samplers(item_shard, n_shards, world, epoch=1)]
    for taken in (0, 4, 12, len(whole[0]) - 4, len(whole[0])):
        resumed = _samplers(item_shard, n_shards, world, epoch=1, taken=taken)
        assert [list(s) for s in resumed] == [w[taken:] for w in whole]
        assert all(len(s) == len(whole[0]) - taken for s in resumed)


def _read(samplers, taken):
    """The real items the ranks read when each took ``taken`` indices (padding left out)."""
    return [i for s in samplers for i in s.stream(s.rank)[:taken].tolist()]


@pytest.mark.parametrize("items,per,subset", LAYOUTS)
@pytest.mark.parametrize("hops", [(2, 1), (1, 2), (3, 2), (2, 3, 1), (4, 1, 3)])
def test_resume_on_other_rank_counts_reads_every_item_exactly_once(items, per, subset, hops):
    """A job reads part of an epoch on ``hops[0]`` ranks, saves, resumes on ``hops[1]`` ranks, ... and finishes
    the epoch: every item is read once, padding aside, whatever the cut points."""
    item_shard, n_shards = _item_shard(items, per, subset)
    rng = np.random.default_rng(hash(hops) % 2**32)
    for trial in range(5):
        base, read = None, []
        for j, world in enumerate(hops):
            samplers = _samplers(item_shard, n_shards, world, epoch=3, base=base, batch=4)
            length = samplers[0].length
            last = j == len(hops) - 1
            taken = length if last else int(rng.integers(0, length // 4 + 1)) * 4  # a checkpoint at a step
            read += _read(samplers, taken)
            progress = samplers[0].progress(taken)
            assert all((s.progress(taken) == progress).all() for s in samplers)  # every rank agrees
            base = progress
        assert sorted(read) == list(range(len(item_shard))), (trial, hops)
        assert (base == np.bincount(item_shard, minlength=n_shards)).all()


def test_progress_counts_real_reads_only_and_a_finished_segment_yields_nothing():
    item_shard = np.array([0] * 12 + [1] * 4)  # rank 1 owns 4 items: it pads 8 by wrap-around
    samplers = _samplers(item_shard, 2, 2, batch=4)
    assert [len(s) for s in samplers] == [12, 12]
    padded = list(samplers[1])
    assert padded[4:] == padded[:4] * 2  # wrap-around over its own segment order
    assert samplers[0].progress(12).tolist() == [12, 4]
    assert samplers[0].progress(8).tolist() == [8, 4]
    done = _samplers(item_shard, 2, 1, base=[12, 4])
    assert len(done[0]) == 0 and list(done[0]) == []
    # after a resume, a rank whose shards are read up pads from its shards' epoch order
    late = _samplers(item_shard, 2, 2, base=[4, 4])
    assert len(late[1]) == 8 and set(item_shard[list(late[1])]) == {1}


def test_bad_arguments_are_refused():
    with pytest.raises(DataError, match="1 shard.* fewer than the 2 ranks.*shard_assignment=global"):
        ShardLocalSampler(np.zeros(10, int), 1, 2, 0)
    with pytest.raises(DataError, match="2 shard.* fewer than the 3 ranks"):
        ShardLocalSampler(np.array([0, 0, 2, 2]), 3, 3, 0)  # shard 1 holds no item of the dataset
    s = ShardLocalSampler(np.arange(10) // 5, 2, 2, 0, batch=2)
    with pytest.raises(ValueError, match="does not fit"):
        s.set_epoch(0, base=[6, 0])
    with pytest.raises(ValueError, match="taken 9 outside"):
        s.set_epoch(0, taken=9)
    with pytest.raises(ValueError, match="rank 2 outside"):
        ShardLocalSampler(np.arange(10) // 5, 2, 2, 2)
