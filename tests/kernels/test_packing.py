"""pack_visible / unpack: round trips and bad input."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError
from foundation.kernels import pack_visible, unpack


def test_index_tensor_round_trip_equals_gather():
    x = torch.randn(3, 10, 4)
    keep = torch.stack([torch.randperm(10)[:6] for _ in range(3)])  # [B, K] indices of visible tokens
    packed, cu, longest = pack_visible(x, keep)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 6, 12, 18] and longest == 6
    padded, mask = unpack(packed, cu)
    torch.testing.assert_close(padded, torch.gather(x, 1, keep[..., None].expand(-1, -1, 4)))
    assert bool(mask.all())


def test_variable_counts_list_and_bool_mask_agree():
    x = torch.randn(3, 8, 5)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[2, :] = True  # sample 1 keeps nothing
    keep = [row.nonzero().flatten() for row in mask]
    p1, cu1, m1 = pack_visible(x, mask)
    p2, cu2, m2 = pack_visible(x, keep)
    torch.testing.assert_close(p1, p2)
    assert cu1.tolist() == cu2.tolist() == [0, 2, 2, 10] and m1 == m2 == 8
    padded, pad_mask = unpack(p1, cu1, max_seqlen=9)
    assert padded.shape == (3, 9, 5) and pad_mask.sum(1).tolist() == [2, 0, 8]
    torch.testing.assert_close(padded[0, :2], x[0, [1, 4]])
    torch.testing.assert_close(padded[2, :8], x[2])
    assert float(padded[~pad_mask].abs().sum()) == 0.0


def test_gradients_flow_back_to_the_visible_tokens_only():
    x = torch.randn(2, 5, 3, requires_grad=True)
    packed, cu, _ = pack_visible(x, torch.tensor([[0, 2], [4, 1]]))
    padded, _ = unpack(packed, cu)
    padded.sum().backward()
    expected = torch.zeros(2, 5, 3)
    expected[0, [0, 2]] = 1
    expected[1, [4, 1]] = 1
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize(
    "keep, match",
    [
        (torch.tensor([[0, 1]]), r"keep indices must have shape \[B, K\] with B = 2"),
        (torch.tensor([[0, 5], [1, 2]]), r"index range \[0, 5\] but x has N = 5"),
        (torch.tensor([[0, -1], [1, 2]]), r"index range \[-1, 0\]"),
        (torch.tensor([[1, 1], [1, 2]]), "repeats a token index"),
        (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), "must hold integer token indices, received dtype torch.float32"),
        (torch.ones(2, 4, dtype=torch.bool), r"boolean keep mask must have shape \[B, N\] = \[2, 5\]"),
        ([torch.tensor([0])], "keep holds 1 index tensors but x has batch size B = 2"),
    ],
)
def test_pack_visible_rejects_bad_keep(keep, match):
    with pytest.raises(ConfigError, match=match):
        pack_visible(torch.randn(2, 5, 3), keep)


def test_unpack_rejects_inconsistent_cu_seqlens():
    packed = torch.randn(6, 2)
    with pytest.raises(ConfigError, match=r"cu_seqlens\[-1\] = 5 but packed holds T = 6"):
        unpack(packed, torch.tensor([0, 2, 5], dtype=torch.int32))
    with pytest.raises(ConfigError, match="must start at 0 and never decrease"):
        unpack(packed, torch.tensor([0, 4, 2, 6], dtype=torch.int32))
    with pytest.raises(ConfigError, match=r"max_seqlen = 3 is shorter than the longest sequence \(4\)"):
        unpack(packed, torch.tensor([0, 2, 6], dtype=torch.int32), max_seqlen=3)


def test_trailing_dims_are_carried_for_every_keep_form():
    x = torch.randn(2, 6, 3, 4)  # [B, N, H, Dh]
    keep = torch.tensor([[5, 0], [2, 3]])
    expected = torch.stack([x[0, [5, 0]], x[1, [2, 3]]]).reshape(4, 3, 4)
    for form in (keep, list(keep)):
        packed, cu, longest = pack_visible(x, form)
        torch.testing.assert_close(packed, expected)
        assert cu.tolist() == [0, 2, 4] and longest == 2


def test_a_plan_packs_like_every_keep_form_it_was_made_from():
    """plan_pack + pack_visible(x, plan) is one gather with no host read; it gives the same tokens, boundaries
    and longest length as pack_visible on the keep it was made from, in the same order."""
    from foundation.kernels import plan_pack

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 2, 4, generator=g)
    mask = torch.rand(3, 9, generator=g) > 0.5
    mask[1] = False  # a sample with nothing visible
    rows = [torch.randperm(9, generator=g)[:k] for k in (4, 0, 7)]
    forms = [mask, rows, torch.stack([torch.randperm(9, generator=g)[:5] for _ in range(3)])]
    for keep in forms:
        want, want_cu, want_max = pack_visible(x, keep)
        plan = plan_pack(keep, 3, 9)
        got, cu, longest = pack_visible(x, plan)
        assert torch.equal(got, want) and torch.equal(cu, want_cu) and longest == want_max
        assert plan.index.dtype == torch.int64 and plan.index.shape == (want.shape[0],)


def test_plan_pack_checks_like_pack_visible_and_a_plan_refuses_another_shape():
    from foundation.kernels import plan_pack

    with pytest.raises(ConfigError, match=r"index range \[0, 5\] but x has N = 5"):
        plan_pack(torch.tensor([[0, 5], [1, 2]]), 2, 5)
    with pytest.raises(ConfigError, match="repeats a token index"):
        plan_pack([torch.tensor([1, 1]), torch.tensor([0])], 2, 5)
    plan = plan_pack(torch.tensor([[0, 1], [2, 3]]), 2, 5)
    with pytest.raises(ConfigError, match=r"PackPlan was made for \[B, N\] = \[2, 5\], x is \[2, 6, 3\]"):
        pack_visible(torch.randn(2, 6, 3), plan)
