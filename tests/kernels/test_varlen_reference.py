"""Reference backend of varlen_attention: against padded SDPA with a key-padding mask, op checks, torch.compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foundation.kernels import pack_visible, unpack, varlen_attention
from tests.kernels._helpers import packed_case


def test_reference_matches_padded_sdpa_with_key_padding_mask():
    lens = [1, 9, 4, 16]
    q, k, v, do, cu = packed_case(lens, 3, 8, torch.float64, seed=1)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = varlen_attention(*leaves, cu, max(lens), backend="reference")
    grads = torch.autograd.grad(out, leaves, do)

    padded_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    padded = [unpack(t, cu)[0].transpose(1, 2) for t in padded_leaves]  # [T, H, Dh] -> [B, H, Kmax, Dh]
    mask = unpack(q, cu)[1]  # [B, Kmax], True = real token
    ref = F.scaled_dot_product_attention(*padded, attn_mask=mask[:, None, None, :])
    ref_packed = ref.transpose(1, 2)[mask]  # [B, H, Kmax, Dh] -> [T, H, Dh]
    ref_grads = torch.autograd.grad(ref_packed, padded_leaves, do)

    torch.testing.assert_close(out, ref_packed)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_reference_keeps_sequences_apart_and_explicit_scale():
    q, k, v, _, cu = packed_case([5, 7], 2, 4, torch.float64, seed=2)
    out = varlen_attention(q, k, v, cu, 7, scale=0.3, backend="reference")
    for s, e in ((0, 5), (5, 12)):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))  # [n, H, Dh] -> [H, n, Dh]
        expected = F.scaled_dot_product_attention(qs, ks, vs, scale=0.3).transpose(0, 1)
        torch.testing.assert_close(out[s:e], expected)


def test_reference_bf16_output_dtype_and_empty_sequence():
    q, k, v, _, cu = packed_case([3, 0, 2], 1, 8, torch.bfloat16, seed=4)
    out = varlen_attention(q, k, v, cu, 3)  # auto -> reference on CPU
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    exact = varlen_attention(q.double(), k.double(), v.double(), cu, 3)
    torch.testing.assert_close(out.double(), exact, atol=2e-2, rtol=2e-2)


def test_custom_op_registrations_pass_opcheck():
    from foundation.kernels.varlen import _varlen_fwd_op

    q, k, v, _, cu = packed_case([2, 5], 2, 4, torch.float32, seed=5)
    args = tuple(t.requires_grad_(True) for t in (q, k, v)) + (cu, 5, 0.5, "reference", "auto", True)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(_varlen_fwd_op, args, test_utils=checks)


def test_torch_compile_traces_through_the_op_fullgraph():
    torch._dynamo.reset()
    x, _, _, do, cu = packed_case([3, 6], 2, 4, torch.float32, seed=6)
    w = torch.randn(4, 4)

    def step(x: torch.Tensor) -> torch.Tensor:
        h = x @ w
        return varlen_attention(h, h * 2, h.sin(), cu, 6, backend="reference") * 3

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager_out, compiled_out = step(xe), compiled(xc)
    torch.testing.assert_close(compiled_out, eager_out)
    (ge,) = torch.autograd.grad(eager_out, xe, do)
    (gc,) = torch.autograd.grad(compiled_out, xc, do)
    torch.testing.assert_close(gc, ge)


def test_pack_then_attend_equals_attention_on_each_sample():
    x = torch.randn(2, 6, 2, 4, dtype=torch.float64)  # [B, N, H, Dh]
    keep = [torch.tensor([5, 0, 2]), torch.tensor([1, 3, 4, 0])]
    packed, cu, longest = pack_visible(x, keep)
    out = varlen_attention(packed, packed, packed, cu, longest)
    for b, idx in enumerate(keep):
        xs = x[b, idx].transpose(0, 1)  # [K_b, H, Dh] -> [H, K_b, Dh]
        expected = F.scaled_dot_product_attention(xs, xs, xs).transpose(0, 1)
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], expected)


def test_explicit_matmul_path_equals_aten_cpu_path():
    from foundation.kernels.reference import reference_varlen_bwd, reference_varlen_fwd

    q, k, v, do, cu = packed_case([4, 1, 11], 2, 8, torch.float64, seed=7)
    out_a, lse_a = reference_varlen_fwd(q, k, v, cu, 0.4)
    out_m, lse_m = reference_varlen_fwd(q, k, v, cu, 0.4, aten_cpu=False)
    torch.testing.assert_close(out_m, out_a)
    torch.testing.assert_close(lse_m, lse_a)
    grads_a = reference_varlen_bwd(do, q, k, v, out_a, lse_a, cu, 0.4)
    grads_m = reference_varlen_bwd(do, q, k, v, out_a, lse_a, cu, 0.4, aten_cpu=False)
    for a, m in zip(grads_a, grads_m):
        torch.testing.assert_close(m, a)


def _old_segment_loop_fwd(q, k, v, cu_seqlens, scale, aten_cpu):
    """The reference forward before it was vectorised (commit b45ef54): one call per sequence."""
    T, H, _ = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out, lse = torch.empty_like(q), torch.empty(H, T, dtype=acc)
    bounds = cu_seqlens.tolist()
    for s, e in ((s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s):
        if aten_cpu:
            qs, ks, vs = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o, seg_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qs, ks, vs, 0.0, False,
                                                                                    scale=scale)
            out[s:e], lse[:, s:e] = o[0].transpose(0, 1), seg_lse[0]
        else:
            qs, ks, vs = (t[s:e].to(acc).transpose(0, 1) for t in (q, k, v))
            scores = torch.matmul(qs, ks.transpose(1, 2)) * scale
            row_lse = torch.logsumexp(scores, dim=-1)
            out[s:e] = torch.matmul(torch.exp(scores - row_lse.unsqueeze(-1)), vs).transpose(0, 1).to(q.dtype)
            lse[:, s:e] = row_lse
    return out, lse


@pytest.mark.parametrize("aten_cpu", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_layout_equals_the_per_sequence_loop_it_replaced(aten_cpu, dtype):
    """Outputs, log-sum-exp and gradients as the old per-sequence loop gave (an empty sequence included)."""
    from foundation.kernels.reference import reference_varlen_bwd, reference_varlen_fwd

    g = torch.Generator().manual_seed(0)
    lens = [5, 0, 1, 9, 3]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), 2, 8, generator=g, dtype=dtype) for _ in range(3))
    out, lse = reference_varlen_fwd(q, k, v, cu, 8**-0.5, aten_cpu=aten_cpu)
    ref_out, ref_lse = _old_segment_loop_fwd(q, k, v, cu, 8**-0.5, aten_cpu)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(lse, ref_lse, **tol)
    # gradients against autograd through the per-sequence loop's matmul form
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    grad = torch.randn(out.shape, generator=g, dtype=dtype)
    (_old_segment_loop_fwd(qr, kr, vr, cu, 8**-0.5, False)[0] * grad).sum().backward()
    dq, dk, dv = reference_varlen_bwd(grad, q, k, v, out, lse, cu, 8**-0.5, aten_cpu=aten_cpu)
    for got, want in ((dq, qr.grad), (dk, kr.grad), (dv, vr.grad)):
        torch.testing.assert_close(got, want, **tol)
