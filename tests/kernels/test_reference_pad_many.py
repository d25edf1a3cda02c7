"""The CPU reference backend pads q, k, v (and dO, out in the backward) into one buffer (issue 16: fewer ops in
the eager step): outputs, log-sum-exp and gradients bit-equal to padding each tensor alone, as before."""
from __future__ import annotations

import pytest
import torch

from foundation.kernels.reference import _Padded, reference_varlen_bwd, reference_varlen_fwd
from tests.kernels._helpers import packed_case


def _one_by_one(self, *ts):
    return tuple(self.pad(t) for t in ts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("lens", [[1, 9, 4, 16], [7, 7, 7], [188]])
def test_padding_in_one_buffer_is_bit_equal_to_padding_each_tensor(monkeypatch, lens, dtype):
    q, k, v, do, cu = packed_case(lens, 3, 8, dtype, seed=3)
    scale = 8**-0.5
    out, lse = reference_varlen_fwd(q, k, v, cu, scale)
    grads = reference_varlen_bwd(do, q, k, v, out, lse, cu, scale)
    monkeypatch.setattr(_Padded, "pad_many", _one_by_one)
    want_out, want_lse = reference_varlen_fwd(q, k, v, cu, scale)
    want_grads = reference_varlen_bwd(do, q, k, v, want_out, want_lse, cu, scale)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    for g, w in zip(grads, want_grads):
        assert g.dtype == w.dtype and torch.equal(g, w)


def test_pad_many_places_each_token_and_zeros_the_padding():
    q, k, _, _, cu = packed_case([2, 5], 2, 4, torch.float32, seed=4)
    pad = _Padded(cu, q.shape[0], q.dtype)
    pq, pk = pad.pad_many(q, k)
    for t, p in ((q, pq), (k, pk)):
        assert p.shape == (2, 2, 5, 4)
        assert torch.equal(p[0, :, :2].transpose(0, 1), t[:2]) and torch.equal(p[1].transpose(0, 1), t[2:])
        assert not p[0, :, 2:].any()
    odd = pad.pad_many(q, k[..., :2])  # different widths: one buffer each, same values
    assert torch.equal(odd[1], pad.pad(k[..., :2]))
