"""The CPU reference backend's padded layout (issue 16, DeeperBrain's step): built once per attention call from
``max_seqlen`` (no host read) and kept for the backward; the numbers are those of building it inside each call."""
from __future__ import annotations

import pytest
import torch

from foundation.kernels import varlen
from foundation.kernels.reference import _Padded, reference_layout, reference_varlen_bwd, reference_varlen_fwd
from tests.kernels._helpers import packed_case


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("aten_cpu", [True, False])
def test_layout_and_max_seqlen_give_the_numbers_of_a_layout_built_per_call(dtype, aten_cpu):
    lens = [1, 9, 4, 16]
    q, k, v, do, cu = packed_case(lens, 3, 8, dtype, seed=5)
    scale = 8**-0.5
    want_out, want_lse = reference_varlen_fwd(q, k, v, cu, scale, aten_cpu=aten_cpu)
    want = reference_varlen_bwd(do, q, k, v, want_out, want_lse, cu, scale, aten_cpu=aten_cpu)
    layout = reference_layout(cu, q, max(lens))
    for kw in ({"max_seqlen": max(lens)}, {"max_seqlen": max(lens) + 5}, {"layout": layout}):
        out, lse = reference_varlen_fwd(q, k, v, cu, scale, aten_cpu=aten_cpu, **kw)
        grads = reference_varlen_bwd(do, q, k, v, out, lse, cu, scale, aten_cpu=aten_cpu, **kw)
        if kw.get("max_seqlen", max(lens)) == max(lens):  # the same padded shapes: bit-equal
            assert torch.equal(out, want_out) and torch.equal(lse, want_lse), kw
            for g, w in zip(grads, want):
                assert torch.equal(g, w), kw
        else:  # a longer padding (an upper bound) only adds masked keys and rows
            tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
            torch.testing.assert_close(out, want_out, **tol)
            torch.testing.assert_close(lse, want_lse, **tol)
            for g, w in zip(grads, want):
                torch.testing.assert_close(g, w, **tol)


def test_layout_places_tokens_and_masks_keys_without_a_host_read():
    q, _, _, _, cu = packed_case([2, 5], 2, 4, torch.float32, seed=4)
    lay = reference_layout(cu, q, 5)
    assert (lay.S, lay.L) == (2, 5) and lay.mask.dtype == q.dtype
    assert lay.seg.tolist() == [0, 0, 1, 1, 1, 1, 1] and lay.pos.tolist() == [0, 1, 0, 1, 2, 3, 4]
    assert torch.isinf(lay.mask[0, 0, 0, 2:]).all() and not lay.mask[0, 0, 0, :2].any() and not lay.mask[1].any()
    read = _Padded(cu, q.shape[0], q.dtype)  # without max_len: the longest length read from cu_seqlens
    assert read.L == 5 and torch.equal(read.mask, lay.mask)


def test_eager_attention_builds_the_layout_once_for_forward_and_backward(monkeypatch):
    """One build per call (the forward's, reused by the backward), and the gradients of a build per pass."""
    q, k, v, do, cu = packed_case([3, 8, 6], 2, 8, torch.float32, seed=6)
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    builds = []
    real_init = _Padded.__init__

    def counting(self, *args, **kwargs):
        builds.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(_Padded, "__init__", counting)
    out = varlen.varlen_attention(q, k, v, cu, 8, backend="reference")
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert len(builds) == 1
    monkeypatch.undo()
    ref_out, ref_lse = reference_varlen_fwd(q.detach(), k.detach(), v.detach(), cu, 8**-0.5)
    ref = reference_varlen_bwd(do, q.detach(), k.detach(), v.detach(), ref_out, ref_lse, cu, 8**-0.5)
    assert torch.equal(out.detach(), ref_out)
    for g, w in zip(grads, ref):
        assert torch.equal(g, w)
