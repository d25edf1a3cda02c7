"""PatchEmbedND's patch rows (issue 16: two short copies instead of one permute of every axis): the same rows,
bit for bit, as the one-permute layout, and the patch embedding equal to torch's convolution with kernel ==
stride where torch has one (N <= 3)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foundation.modalities.fmri.hiera4d import PatchEmbedND


def _one_permute(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """The layout before issue 16's cut: [B, C, g0, k0, g1, k1, ...] permuted in one copy."""
    B, C, n = x.shape[0], x.shape[1], len(kernel)
    grid = [s // k for s, k in zip(x.shape[2:], kernel)]
    x = x.reshape([B, C] + [v for g, k in zip(grid, kernel) for v in (g, k)])
    order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]
    return x.permute(order).reshape(B, *grid, -1)


CASES = [  # (C, input grid, kernel)
    (1, (8, 24, 24, 24), (2, 2, 2, 2)),  # slim-brain-tiny
    (2, (4, 6, 9, 8), (1, 3, 3, 2)),
    (3, (12, 10, 6), (3, 5, 2)),
    (2, (6, 8), (3, 4)),
    (3, (10,), (5,)),
]


@pytest.mark.parametrize("C,size,kernel", CASES)
def test_patch_rows_equal_the_one_permute_layout_bit_for_bit(C, size, kernel):
    x = torch.randn(2, C, *size, generator=torch.Generator().manual_seed(0))
    emb = PatchEmbedND(C, 16, kernel, kernel, (0,) * len(kernel))
    got = emb.patches(x)
    want = _one_permute(x, kernel)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)
    assert torch.equal(emb(x), F.linear(want, emb.proj.weight.flatten(1), emb.proj.bias))


@pytest.mark.parametrize("C,size,kernel", [c for c in CASES if len(c[2]) <= 3])
def test_linear_patch_embedding_equals_torch_convolution(C, size, kernel):
    x = torch.randn(2, C, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    emb = PatchEmbedND(C, 16, kernel, kernel, (0,) * len(kernel)).double()
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    want = conv(x, emb.proj.weight, emb.proj.bias, stride=kernel).movedim(1, -1)  # [B, D, *S'] -> [B, *S', D]
    torch.testing.assert_close(emb(x), want, rtol=1e-12, atol=1e-12)
