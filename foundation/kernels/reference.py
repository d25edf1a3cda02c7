"""Torch reference for variable-length (packed) attention, forward and backward.

The same maths as the Triton kernels of :mod:`foundation.kernels.triton_varlen`
(FlashAttention-2, Dao 2023, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning", https://arxiv.org/abs/2307.08691), written
segment by segment with plain torch ops so that it runs on any device. It is the
CPU implementation of the ``foundation::varlen_attn_fwd`` / ``_bwd`` ops and the
path taken whenever CUDA or triton is missing.

Layout: packed tokens of all sequences one after another, ``q, k, v`` of shape
[T, H, Dh] (T = total tokens), ``cu_seqlens`` [S + 1] int32 with the start of
each of the S sequences and ``cu_seqlens[-1] == T``. Attention is non-causal and
never crosses a sequence boundary.

Every segment is computed with fp32 accumulation (fp64 for fp64 inputs) and
outputs cast back to the input dtype, the numerics of the kernels. On CPU each
segment goes through ATen's CPU flash-attention kernels
(``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward, which
return and take the same log-sum-exp); elsewhere through explicit matmuls and
``logsumexp``. The log-sum-exp of each row (natural log, fp32, [H, T]) is
returned for the backward.
"""
from __future__ import annotations

import torch

__all__ = ["reference_varlen_fwd", "reference_varlen_bwd", "reference_varlen_dropout"]


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu_seqlens.tolist()
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


_CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _bhnd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).unsqueeze(0)  # [n, H, Dh] -> [1, H, n, Dh]


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    """fp32 accumulation (fp64 for fp64 inputs, used by tests as the exact answer)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def reference_varlen_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float, aten_cpu: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of packed attention.

    Args:
        q: queries [T, H, Dh].
        k: keys [T, H, Dh].
        v: values [T, H, Dh].
        cu_seqlens: sequence starts [S + 1], int32, ``cu_seqlens[-1] == T``.
        scale: factor applied to q.k (usually Dh ** -0.5).
        aten_cpu: for CPU tensors use ATen's CPU flash kernel (False: explicit
            matmuls, the path of other devices).

    Returns:
        ``(out [T, H, Dh] in q.dtype, lse [H, T] fp32, fp64 for fp64 inputs)``: the attention output and the
        natural-log log-sum-exp of each scaled score row.
    """
    T, H, _ = q.shape
    acc = _acc_dtype(q)
    out = torch.empty_like(q)
    lse = torch.empty(H, T, dtype=acc, device=q.device)
    if q.device.type == "cpu" and aten_cpu:
        for s, e in _segments(cu_seqlens):
            qs, ks, vs = (_bhnd(t[s:e]) for t in (q, k, v))  # [n, H, Dh] -> [1, H, n, Dh]
            o, seg_lse = _CPU_FLASH(qs, ks, vs, 0.0, False, scale=scale)
            out[s:e] = o[0].transpose(0, 1)  # [1, H, n, Dh] -> [n, H, Dh]
            lse[:, s:e] = seg_lse[0]
        return out, lse
    for s, e in _segments(cu_seqlens):
        qs = q[s:e].to(acc).transpose(0, 1)  # [n, H, Dh] -> [H, n, Dh]
        ks = k[s:e].to(acc).transpose(0, 1)
        vs = v[s:e].to(acc).transpose(0, 1)
        scores = torch.matmul(qs, ks.transpose(1, 2)) * scale  # [H, n, n]
        row_lse = torch.logsumexp(scores, dim=-1)  # [H, n]
        probs = torch.exp(scores - row_lse.unsqueeze(-1))
        out[s:e] = torch.matmul(probs, vs).transpose(0, 1).to(q.dtype)  # [H, n, Dh] -> [n, H, Dh]
        lse[:, s:e] = row_lse
    return out, lse


def reference_varlen_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    aten_cpu: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of packed attention from the saved log-sum-exp.

    With P = exp(scale * Q K^T - lse) and Delta = rowsum(dO * O):
    dV = P^T dO, dS = P * (dO V^T - Delta), dQ = scale * dS K, dK = scale * dS^T Q.

    Args:
        grad_out: dO [T, H, Dh].
        q, k, v: the forward inputs [T, H, Dh].
        out: the forward output [T, H, Dh].
        lse: the forward log-sum-exp [H, T] fp32.
        cu_seqlens: sequence starts [S + 1].
        scale: the forward scale.
        aten_cpu: for CPU tensors use ATen's CPU flash backward (False: explicit matmuls).

    Returns:
        ``(dq, dk, dv)``, each [T, H, Dh] in the dtype of q.
    """
    acc = _acc_dtype(q)
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    if q.device.type == "cpu" and aten_cpu:
        for s, e in _segments(cu_seqlens):
            qs, ks, vs, os_, dos = (_bhnd(t[s:e]) for t in (q, k, v, out, grad_out))  # [n, H, Dh] -> [1, H, n, Dh]
            seg_lse = lse[:, s:e].unsqueeze(0).contiguous()  # [H, n] -> [1, H, n]
            grads = _CPU_FLASH_BWD(dos, qs, ks, vs, os_, seg_lse, 0.0, False, scale=scale)
            for buf, g in zip((dq, dk, dv), grads):
                buf[s:e] = g[0].transpose(0, 1)  # [1, H, n, Dh] -> [n, H, Dh]
        return dq, dk, dv
    delta = (grad_out.to(acc) * out.to(acc)).sum(-1).transpose(0, 1)  # [T, H] -> [H, T]
    for s, e in _segments(cu_seqlens):
        qs = q[s:e].to(acc).transpose(0, 1)  # [n, H, Dh] -> [H, n, Dh]
        ks = k[s:e].to(acc).transpose(0, 1)
        vs = v[s:e].to(acc).transpose(0, 1)
        dos = grad_out[s:e].to(acc).transpose(0, 1)
        probs = torch.exp(torch.matmul(qs, ks.transpose(1, 2)) * scale - lse[:, s:e].unsqueeze(-1))  # [H, n, n]
        dv[s:e] = torch.matmul(probs.transpose(1, 2), dos).transpose(0, 1).to(v.dtype)
        dp = torch.matmul(dos, vs.transpose(1, 2))  # [H, n, n]
        ds = probs * (dp - delta[:, s:e].unsqueeze(-1))
        dq[s:e] = (torch.matmul(ds, ks) * scale).transpose(0, 1).to(q.dtype)
        dk[s:e] = (torch.matmul(ds.transpose(1, 2), qs) * scale).transpose(0, 1).to(k.dtype)
    return dq, dk, dv


def reference_varlen_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float, dropout_p: float
) -> torch.Tensor:
    """Packed attention with dropout on the attention probabilities (training only).

    The fused kernels have no dropout; this path runs ``scaled_dot_product_attention``
    per segment under ordinary autograd.

    Args:
        q, k, v: [T, H, Dh].
        cu_seqlens: sequence starts [S + 1].
        scale: factor applied to q.k.
        dropout_p: probability of zeroing an attention weight.

    Returns:
        The output [T, H, Dh].
    """
    outs = []
    for s, e in _segments(cu_seqlens):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))  # [n, H, Dh] -> [H, n, Dh]
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, scale=scale)
        outs.append(o.transpose(0, 1))  # [H, n, Dh] -> [n, H, Dh]
    return torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)
