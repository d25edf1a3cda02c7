"""Triton varlen kernels (under TRITON_INTERPRET=1, see conftest.py) against an fp64 reference.

Rule (as in FlashAttention's own tests): for the output and each of dq, dk, dv the
kernel's max abs error against the fp64 answer is at most 2x the error of the plain
torch computation (softmax(q k^T) v with autograd) in the same precision, plus an
absolute floor of 1e-6 for fp32 (both errors are ~1e-7 there, so rounding noise
alone could flip a pure ratio) and 0 for 16-bit dtypes.
"""
from __future__ import annotations

import pytest
import torch

from foundation.kernels import varlen_attention
from tests.kernels._helpers import forward_backward, max_errors, packed_case, plain_attention

FLOOR = {torch.float32: 1e-6, torch.bfloat16: 0.0, torch.float16: 0.0}

CASES = [
    # (lengths, heads, head_dim, dtype, mode)
    pytest.param([1, 50, 7, 90, 3], 2, 32, torch.float32, "sequence", id="fp32-d32-h2-mixed-seq"),
    pytest.param([1, 50, 7, 90, 3], 2, 32, torch.float32, "packed", id="fp32-d32-h2-mixed-packed"),
    pytest.param([3, 1, 9, 5, 12, 2, 8, 6, 1, 20], 3, 64, torch.bfloat16, "auto", id="bf16-d64-h3-short-auto"),
    pytest.param([150, 1, 4], 1, 64, torch.bfloat16, "sequence", id="bf16-d64-h1-long-seq"),
    pytest.param([1, 70, 5], 1, 128, torch.float16, "packed", id="fp16-d128-h1-packed"),
    pytest.param([33, 2], 2, 128, torch.float32, "auto", id="fp32-d128-h2-auto"),
]


def test_kernels_run_in_the_interpreter():
    from foundation.kernels.triton_varlen import INTERPRETED

    assert INTERPRETED, "foundation.kernels.triton_varlen was imported before TRITON_INTERPRET=1 was set"


@pytest.mark.parametrize("lens, heads, head_dim, dtype, mode", CASES)
def test_triton_matches_fp64_within_twice_plain_torch_error(lens, heads, head_dim, dtype, mode):
    q, k, v, do, cu = packed_case(lens, heads, head_dim, dtype, seed=len(lens) + head_dim)
    scale = head_dim**-0.5
    exact = forward_backward(
        lambda a, b, c: plain_attention(a, b, c, cu, scale), q.double(), k.double(), v.double(), do
    )
    kernel = forward_backward(
        lambda a, b, c: varlen_attention(a, b, c, cu, max(lens), backend="triton", mode=mode), q, k, v, do
    )
    plain = forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), q, k, v, do)
    assert all(t.dtype == dtype for t in kernel)
    for name, got, base in zip(("out", "dq", "dk", "dv"), max_errors(kernel, exact), max_errors(plain, exact)):
        assert got <= 2 * base + FLOOR[dtype], f"{name}: kernel error {got:.3g} > 2 x plain torch error {base:.3g}"


def test_sequence_and_packed_modes_agree_with_reference_backend():
    q, k, v, do, cu = packed_case([5, 1, 40, 17], 2, 16, torch.float32, seed=3)
    results = [
        forward_backward(lambda a, b, c: varlen_attention(a, b, c, cu, 40, backend=be, mode=mode), q, k, v, do)
        for be, mode in (("triton", "sequence"), ("triton", "packed"), ("reference", "auto"))
    ]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auto_mode_picks_packing_for_short_sequences():
    from foundation.kernels.varlen import PACK_MAX_SEQLEN, _resolve_mode

    assert _resolve_mode("auto", PACK_MAX_SEQLEN) == "packed"
    assert _resolve_mode("auto", PACK_MAX_SEQLEN + 1) == "sequence"
    assert _resolve_mode("sequence", 3) == "sequence"


@pytest.mark.parametrize("mode", ["sequence", "packed"])
def test_gpu_tile_choices_match_fp64(mode):
    """The tiles the GPU defaults use for 16-bit, head dim <= 64 (fwd 64x32; dK/dV 16x64, dQ 64x16), and a wide
    alternative, passed explicitly: same error rule as above (the interpreter runs whatever tiles it is given)."""
    from foundation.kernels.triton_varlen import TileConfig, triton_varlen_bwd, triton_varlen_fwd

    lens = [3, 1, 70, 5, 12, 33]
    q, k, v, do, cu = packed_case(lens, 2, 64, torch.bfloat16, seed=11)
    scale = 64**-0.5
    exact = forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), q.double(), k.double(), v.double(), do)
    plain = max_errors(forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), q, k, v, do), exact)
    for fwd, bwd in ((TileConfig(64, 32, 4, 3), (TileConfig(16, 64, 4, 3), TileConfig(64, 16, 4, 3))),
                     (TileConfig(128, 64, 8, 2), (TileConfig(32, 128, 8, 2), TileConfig(128, 32, 8, 2)))):
        out, lse = triton_varlen_fwd(q, k, v, cu, max(lens), scale, mode, config=fwd)
        grads = triton_varlen_bwd(do, q, k, v, out, lse, cu, max(lens), scale, mode, configs=bwd)
        for name, got, base in zip(("out", "dq", "dk", "dv"), max_errors((out, *grads), exact), plain):
            assert got <= 2 * base, f"{fwd} / {bwd} {name}: kernel error {got:.3g} > 2 x plain torch error {base:.3g}"
