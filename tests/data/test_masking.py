"""foundation.data.masking: the one mask sampler of DeeperBrain and SLIM-Brain, by its properties."""
from __future__ import annotations

import pytest
import torch

from foundation.data.masking import n_visible, sample_keep


def _valid(seed: int = 0, B: int = 6, N: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(B, N, generator=g) < 0.6  # [B, N]
    valid[0] = False  # a sample without valid tokens
    valid[1] = False
    valid[1, 7] = True  # a sample with one valid token
    return valid


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("keep_one_masked", [False, True])
def test_counts_uniqueness_and_cover(ratio, keep_one_masked):
    valid = _valid()
    keep, drop = sample_keep(valid, ratio, torch.Generator().manual_seed(1), keep_one_masked=keep_one_masked)
    assert len(keep) == len(drop) == valid.shape[0]
    for row, k, d in zip(valid, keep, drop):
        n = int(row.sum())
        assert k.numel() == n_visible(n, ratio, keep_one_masked)
        assert k.numel() + d.numel() == n
        assert (k.diff() > 0).all() and (d.diff() > 0).all()  # sorted, no repeat
        assert not set(k.tolist()) & set(d.tolist())
        assert set(k.tolist()) | set(d.tolist()) == set(row.nonzero().flatten().tolist())  # valid tokens only
        assert k.dtype == d.dtype == torch.int64


def test_visible_count_rules():
    assert n_visible(8, 0.5) == 4 and n_visible(4, 0.5) == 2
    assert n_visible(10, 0.99) == 1  # at least one visible token
    assert n_visible(10, 0.0) == 10 and n_visible(10, 0.0, keep_one_masked=True) == 9  # always one target
    assert n_visible(10, 0.7, keep_one_masked=True) == 3
    assert n_visible(0, 0.5) == 0 and n_visible(1, 0.5, keep_one_masked=True) == 0


def test_seeded_reproducibility_and_global_rng():
    valid = _valid()
    a = sample_keep(valid, 0.5, torch.Generator().manual_seed(3))[0]
    b = sample_keep(valid, 0.5, torch.Generator().manual_seed(3))[0]
    c = sample_keep(valid, 0.5, torch.Generator().manual_seed(4))[0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    torch.manual_seed(11)
    d = sample_keep(valid, 0.5)[0]
    torch.manual_seed(11)
    e = sample_keep(valid, 0.5)[0]
    assert all(torch.equal(x, y) for x, y in zip(d, e))


def test_draws_are_uniform_over_valid_tokens():
    valid = torch.zeros(1, 12, dtype=torch.bool)
    valid[0, 2:10] = True
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(12)
    for _ in range(2000):
        counts[sample_keep(valid, 0.5, g)[0][0]] += 1
    assert counts[:2].sum() == 0 and counts[10:].sum() == 0
    assert torch.allclose(counts[2:10] / 2000, torch.full((8,), 0.5), atol=0.05)  # each kept half the time


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"valid must be \[B, N\] bool, got shape \(5,\)"):
        sample_keep(torch.ones(5, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1.0"):
        sample_keep(torch.ones(2, 5, dtype=torch.bool), 1.0)
