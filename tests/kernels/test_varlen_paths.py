"""The two call paths of varlen_attention (eager autograd.Function, custom op) and the host-side work per call.

The eager path and the custom op run the same functions, so their outputs and gradients must be equal to
the bit, for the reference backend and for the Triton kernels (interpreter, see conftest.py). Strided q, k, v
(``qkv.unbind``) and dO must give the fp64 answer without being copied. ``backend="sdpa"`` (padded SDPA)
must agree with the others.
"""
from __future__ import annotations

import pytest
import torch

from foundation.kernels import varlen_attention
from foundation.kernels.varlen import VarlenAttentionFunction
from tests.kernels._helpers import forward_backward, max_errors, packed_case, plain_attention

OP = torch.ops.foundation.varlen_attn_fwd


def _op_path(backend: str, cu: torch.Tensor, longest: int, mode: str = "auto"):
    def run(q, k, v):
        out, _ = OP(q, k, v, cu, longest, q.shape[-1] ** -0.5, backend, mode, False)
        return out

    return run


@pytest.mark.parametrize(
    "backend, dtype, mode",
    [("reference", torch.float64, "auto"), ("reference", torch.bfloat16, "auto"),
     ("triton", torch.float32, "sequence"), ("triton", torch.bfloat16, "packed")],
)
def test_eager_function_and_custom_op_give_identical_numbers(backend, dtype, mode):
    lens = [4, 1, 19, 7]
    q, k, v, do, cu = packed_case(lens, 2, 16, dtype, seed=21)
    eager = forward_backward(
        lambda a, b, c: varlen_attention(a, b, c, cu, max(lens), backend=backend, mode=mode), q, k, v, do
    )
    op = forward_backward(_op_path(backend, cu, max(lens), mode), q, k, v, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), eager, op):
        assert torch.equal(a, b), f"{backend} {dtype} {name}: eager path and custom op differ"


def test_eager_path_is_the_autograd_function_and_compile_keeps_the_custom_op():
    q, k, v, _, cu = packed_case([3, 5], 2, 8, torch.float32, seed=22)
    leaf = q.clone().requires_grad_(True)
    out = varlen_attention(leaf, k, v, cu, 5)
    assert type(out.grad_fn).__name__ == VarlenAttentionFunction.__name__ + "Backward"

    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(lambda a: varlen_attention(a, k, v, cu, 5), backend=capture, fullgraph=True)(leaf)
    code = graphs[0].code
    assert "foundation.varlen_attn_fwd" in code and "Function" not in code, code


@pytest.mark.parametrize("mode", ["sequence", "packed"])
def test_triton_strided_qkv_and_grad_match_fp64_without_copies(mode):
    """q, k, v as views of one [T, 3, H, Dh] buffer and dO as a view with a padded token stride."""
    from foundation.kernels.triton_varlen import _prep

    lens, H, Dh = [5, 1, 33, 12], 2, 32
    T = sum(lens)
    gen = torch.Generator().manual_seed(23)
    qkv = torch.randn(T, 3, H, Dh, generator=gen)
    do_buf = torch.randn(T, H + 1, Dh, generator=gen)
    q, k, v = qkv.unbind(1)  # 3 x [T, H, Dh], token stride 3 * H * Dh
    do = do_buf[:, :H]  # [T, H, Dh], token stride (H + 1) * Dh
    assert not q.is_contiguous() and not do.is_contiguous()
    assert all(a is b for a, b in zip(_prep(q, k, v, do), (q, k, v, do)))  # passed on as they are
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    scale = Dh**-0.5

    def run_views(a, b, c):  # the leaves are contiguous; slice strided views out of one buffer again
        buf = torch.stack([a, b, c], dim=1)  # [T, 3, H, Dh]
        return varlen_attention(*buf.unbind(1), cu, max(lens), backend="triton", mode=mode)

    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = run_views(*leaves)
    got = (out.detach(), *torch.autograd.grad(out, leaves, do))
    exact = forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), q.double(), k.double(),
                             v.double(), do.double())
    plain = forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), q, k, v, do)
    for name, e, b in zip(("out", "dq", "dk", "dv"), max_errors(got, exact), max_errors(plain, exact)):
        assert e <= 2 * b + 1e-6, f"{name}: kernel error {e:.3g} > 2 x plain torch error {b:.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_backend_matches_reference_forward_and_backward(dtype):
    lens = [1, 9, 4, 16, 2]
    q, k, v, do, cu = packed_case(lens, 3, 8, dtype, seed=24)
    padded = forward_backward(lambda a, b, c: varlen_attention(a, b, c, cu, max(lens) + 3, backend="sdpa"), q, k, v, do)
    ref = forward_backward(lambda a, b, c: varlen_attention(a, b, c, cu, max(lens), backend="reference"), q, k, v, do)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for a, b in zip(padded, ref):
        torch.testing.assert_close(a, b, **tol)


def test_tile_choices_and_grids_are_cached_per_shape():
    from foundation.kernels import triton_varlen as tv

    q, k, v, do, cu = packed_case([6, 2, 9], 1, 16, torch.float32, seed=25)
    forward_backward(lambda a, b, c: varlen_attention(a, b, c, cu, 9, backend="triton"), q, k, v, do)
    grid_before, cfg_before = tv._grid.cache_info(), tv.fwd_config.cache_info()
    forward_backward(lambda a, b, c: varlen_attention(a, b, c, cu, 9, backend="triton"), q, k, v, do)
    grid_after, cfg_after = tv._grid.cache_info(), tv.fwd_config.cache_info()
    assert grid_after.misses == grid_before.misses and grid_after.hits >= grid_before.hits + 3
    assert cfg_after.misses == cfg_before.misses
