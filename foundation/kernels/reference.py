"""Torch reference for variable-length (packed) attention, forward and backward.

The same maths as the Triton kernels of :mod:`foundation.kernels.triton_varlen`
(FlashAttention-2, Dao 2023, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning", https://arxiv.org/abs/2307.08691), written
with plain torch ops on the sequences laid out as a padded batch (keys past a
sequence's end masked), so that it runs on any device without a loop over sequences. It is the
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

__all__ = ["reference_layout", "reference_varlen_fwd", "reference_varlen_bwd", "reference_varlen_dropout"]


class _Padded:
    """The packed layout as a padded batch: token t of sequence b sits at ``[b, pos]``; keys past a length masked.

    Built from ``cu_seqlens`` with no Python loop over sequences, and no host read when ``max_len`` (the
    longest length, or an upper bound: the padded length L) is given, else one (the longest length).
    """

    def __init__(self, cu_seqlens: torch.Tensor, total: int, dtype: torch.dtype, max_len: int | None = None) -> None:
        cu = cu_seqlens.long()
        lens = cu[1:] - cu[:-1]  # [S]
        self.S = lens.numel()
        if max_len is None:
            max_len = int(lens.max()) if total else 1
        self.L = max(max_len, 1)
        tok = torch.arange(total, device=cu.device)
        self.seg = torch.searchsorted(cu[1:].contiguous(), tok, right=True)  # [T] sequence of each token
        self.pos = tok - cu[self.seg]  # [T] position inside it
        keys = torch.arange(self.L, device=cu.device)[None] < lens[:, None]  # [S, L] True = a real key
        self.mask = torch.zeros(self.S, 1, 1, self.L, dtype=dtype, device=cu.device).masked_fill_(
            ~keys[:, None, None, :], float("-inf"))  # additive [S, 1, 1, L]

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """[T, H, Dh] -> [S, H, L, Dh] (zeros at padding)."""
        out = t.new_zeros(self.S, self.L, *t.shape[1:])
        out[self.seg, self.pos] = t
        return out.transpose(1, 2)

    def pad_many(self, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """n tensors [T, H, Dh] -> n x [S, H, L, Dh] (zeros at padding), in one zero-fill and one scatter.

        The n results are views of one [S, L, n, H, Dh] buffer (rows of Dh contiguous, as ATen's CPU flash
        kernels read them); the values are those of :meth:`pad` on each tensor.
        """
        if len({(t.dtype, t.shape) for t in ts}) > 1:  # mixed dtypes or widths: one buffer each
            return tuple(self.pad(t) for t in ts)
        stacked = torch.stack(ts, 1)  # n x [T, H, Dh] -> [T, n, H, Dh]
        out = stacked.new_zeros(self.S, self.L, *stacked.shape[1:])
        out[self.seg, self.pos] = stacked
        return out.permute(2, 0, 3, 1, 4).unbind(0)  # [S, L, n, H, Dh] -> n x [S, H, L, Dh]

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """[S, H, L, Dh] -> [T, H, Dh]."""
        return t.transpose(1, 2)[self.seg, self.pos]

    def pad_rows(self, lse: torch.Tensor) -> torch.Tensor:
        """Per-row values [H, T] -> [S, H, L] (0 at padded rows, which carry no gradient)."""
        out = lse.new_zeros(self.S, self.L, lse.shape[0])
        out[self.seg, self.pos] = lse.transpose(0, 1)
        return out.transpose(1, 2)

    def unpad_rows(self, t: torch.Tensor) -> torch.Tensor:
        """[S, H, L] -> [H, T]."""
        return t.transpose(1, 2)[self.seg, self.pos].transpose(0, 1).contiguous()


def _layout_dtype(q: torch.Tensor, aten_cpu: bool) -> torch.dtype:
    """The dtype of the additive key mask: q's on ATen's CPU kernels, the accumulation dtype elsewhere."""
    return q.dtype if q.device.type == "cpu" and aten_cpu else _acc_dtype(q)


def reference_layout(cu_seqlens: torch.Tensor, q: torch.Tensor, max_seqlen: int | None = None) -> _Padded:
    """The padded layout of a packed batch, built once to serve a forward and its backward (the eager autograd
    function of :mod:`foundation.kernels.varlen` keeps it between the two): pass it as ``layout`` to
    :func:`reference_varlen_fwd` and :func:`reference_varlen_bwd` (default paths, ``aten_cpu=True``).

    Args:
        cu_seqlens: sequence starts [S + 1] int32. q: the queries [T, H, Dh] (device, dtype and T are read).
        max_seqlen: the longest sequence (or an upper bound); None reads it from cu_seqlens.
    """
    return _Padded(cu_seqlens, q.shape[0], _layout_dtype(q, True), max_seqlen)


def _layout(layout: _Padded | None, cu_seqlens: torch.Tensor, q: torch.Tensor, aten_cpu: bool,
            max_seqlen: int | None) -> _Padded:
    """``layout`` when it was built for this path's mask dtype, else a new one."""
    dtype = _layout_dtype(q, aten_cpu)
    if layout is not None and layout.mask.dtype == dtype:
        return layout
    return _Padded(cu_seqlens, q.shape[0], dtype, max_seqlen)


_CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    """fp32 accumulation (fp64 for fp64 inputs, used by tests as the exact answer)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def reference_varlen_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float, aten_cpu: bool = True,
    max_seqlen: int | None = None, layout: _Padded | None = None,
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
        max_seqlen: the longest sequence (or an upper bound), a host int; None reads it from cu_seqlens (one
            host read per call).
        layout: :func:`reference_layout` of these cu_seqlens and q, built by the caller (None: built here).

    Returns:
        ``(out [T, H, Dh] in q.dtype, lse [H, T] fp32, fp64 for fp64 inputs)``: the attention output and the
        natural-log log-sum-exp of each scaled score row.
    """
    T, H, _ = q.shape
    acc = _acc_dtype(q)
    if T == 0:
        return torch.empty_like(q), torch.empty(H, 0, dtype=acc, device=q.device)
    if q.device.type == "cpu" and aten_cpu:
        pad = _layout(layout, cu_seqlens, q, aten_cpu, max_seqlen)
        o, lse = _CPU_FLASH(*pad.pad_many(q, k, v), 0.0, False, attn_mask=pad.mask, scale=scale)
        return pad.unpad(o).to(q.dtype), pad.unpad_rows(lse).to(acc)
    pad = _layout(layout, cu_seqlens, q, aten_cpu, max_seqlen)
    qs, ks, vs = (pad.pad(t.to(acc)) for t in (q, k, v))  # [S, H, L, Dh]
    scores = torch.matmul(qs, ks.transpose(-1, -2)) * scale + pad.mask  # [S, H, L, L]
    row_lse = torch.logsumexp(scores, dim=-1)  # [S, H, L]
    probs = torch.exp(scores - row_lse.unsqueeze(-1))
    out = pad.unpad(torch.matmul(probs, vs)).to(q.dtype)  # [S, H, L, Dh] -> [T, H, Dh]
    return out, pad.unpad_rows(row_lse)


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
    max_seqlen: int | None = None,
    layout: _Padded | None = None,
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
        max_seqlen, layout: as in :func:`reference_varlen_fwd` (the forward's layout serves here).

    Returns:
        ``(dq, dk, dv)``, each [T, H, Dh] in the dtype of q.
    """
    T = q.shape[0]
    if T == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    acc = _acc_dtype(q)
    if q.device.type == "cpu" and aten_cpu:
        pad = _layout(layout, cu_seqlens, q, aten_cpu, max_seqlen)
        dos, qs, ks, vs, os_ = pad.pad_many(grad_out, q, k, v, out)
        grads = _CPU_FLASH_BWD(dos, qs, ks, vs, os_, pad.pad_rows(lse).contiguous(), 0.0, False,
                               attn_mask=pad.mask, scale=scale)
        return tuple(pad.unpad(g).to(t.dtype) for g, t in zip(grads, (q, k, v)))  # type: ignore[return-value]
    pad = _layout(layout, cu_seqlens, q, aten_cpu, max_seqlen)
    delta = pad.pad_rows((grad_out.to(acc) * out.to(acc)).sum(-1).transpose(0, 1))  # [T, H] -> [S, H, L]
    qs, ks, vs, dos = (pad.pad(t.to(acc)) for t in (q, k, v, grad_out))  # [S, H, L, Dh]
    scores = torch.matmul(qs, ks.transpose(-1, -2)) * scale + pad.mask  # [S, H, L, L]
    probs = torch.exp(scores - pad.pad_rows(lse.to(acc)).unsqueeze(-1))
    dv = torch.matmul(probs.transpose(-1, -2), dos)
    ds = probs * (torch.matmul(dos, vs.transpose(-1, -2)) - delta.unsqueeze(-1))
    dq = torch.matmul(ds, ks) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qs) * scale
    return pad.unpad(dq).to(q.dtype), pad.unpad(dk).to(k.dtype), pad.unpad(dv).to(v.dtype)


def reference_varlen_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float, dropout_p: float
) -> torch.Tensor:
    """Packed attention with dropout on the attention probabilities (training only).

    The fused kernels have no dropout; this path runs ``scaled_dot_product_attention``
    on the padded batch under ordinary autograd.

    Args:
        q, k, v: [T, H, Dh].
        cu_seqlens: sequence starts [S + 1].
        scale: factor applied to q.k.
        dropout_p: probability of zeroing an attention weight.

    Returns:
        The output [T, H, Dh].
    """
    if q.shape[0] == 0:
        return q.new_empty(q.shape)
    pad = _Padded(cu_seqlens, q.shape[0], q.dtype)
    o = torch.nn.functional.scaled_dot_product_attention(pad.pad(q), pad.pad(k), pad.pad(v), attn_mask=pad.mask,
                                                         dropout_p=dropout_p, scale=scale)  # [S, H, L, Dh]
    return pad.unpad(o)
