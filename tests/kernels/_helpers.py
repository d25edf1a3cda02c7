"""Shared helpers of the kernel tests: random packed inputs and the plain torch computation."""
from __future__ import annotations

import torch


def packed_case(lens: list[int], heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """Random q, k, v [T, H, Dh], dO, and cu_seqlens [S + 1] int32 for the given sequence lengths."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(lens)
    q, k, v, do = (torch.randn(total, heads, head_dim, generator=gen).to(dtype) for _ in range(4))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    return q, k, v, do, cu


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale q k^T) v per segment with ordinary torch ops in the dtype of the inputs."""
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))  # [n, H, Dh] -> [H, n, Dh]
        probs = torch.softmax(torch.matmul(qs, ks.transpose(1, 2)) * scale, dim=-1)
        outs.append(torch.matmul(probs, vs).transpose(0, 1))  # [H, n, Dh] -> [n, H, Dh]
    return torch.cat(outs)


def forward_backward(fn, q, k, v, do):
    """(out, dq, dk, dv) of fn(q, k, v) for upstream gradient do."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return (out.detach(), *grads)


def max_errors(got, exact) -> list[float]:
    """Max absolute error of each tensor against its fp64 counterpart."""
    return [float((g.double() - e).abs().max()) for g, e in zip(got, exact)]
