import pytest
import torch

from foundation.pretrain.sampler import ResumableDistributedSampler


def test_ranks_partition_a_permutation_and_match_torch():
    parts = []
    for rank in range(3):
        s = ResumableDistributedSampler(30, num_replicas=3, rank=rank, seed=5)
        s.set_epoch(2)
        ref = torch.utils.data.DistributedSampler(range(30), num_replicas=3, rank=rank, seed=5, drop_last=True)
        ref.set_epoch(2)
        # same seeding scheme as torch's sampler (seed + epoch) gives the same shards
        assert list(s) == list(ref)
        parts += list(s)
    assert sorted(parts) == list(range(30))


def test_epochs_differ_and_start_offset_skips():
    s = ResumableDistributedSampler(20, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0, start=7)
    assert list(s) == e0[7:] and len(s) == 13


def test_bad_arguments():
    with pytest.raises(ValueError, match="smaller than the world size"):
        ResumableDistributedSampler(1, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="start 99"):
        ResumableDistributedSampler(10).set_epoch(0, start=99)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3)])
def test_resuming_on_another_world_size_neither_repeats_nor_skips(before, after):
    """``start`` counts the epoch's order over all ranks: a job that consumed ``p`` samples on ``before`` ranks
    continues on ``after`` ranks with exactly the rest of the same epoch order."""
    order = torch.randperm(60, generator=torch.Generator().manual_seed(3 + 4)).tolist()  # seed 3, epoch 4
    consumed = 24
    seen = []
    for rank in range(before):
        s = ResumableDistributedSampler(60, num_replicas=before, rank=rank, seed=3)
        s.set_epoch(4)
        seen += list(s)[: consumed // before]
    rest = []
    for rank in range(after):
        s = ResumableDistributedSampler(60, num_replicas=after, rank=rank, seed=3)
        s.set_epoch(4, start=consumed)
        assert len(s) == (60 - consumed) // after
        rest += list(s)
    assert sorted(seen) == sorted(order[:consumed])
    assert sorted(seen + rest) == list(range(60))  # 36 left: divisible by 1, 2 and 3, so nothing is dropped
