"""Packed attention computed the padded way: the baseline of ``varlen_attention(backend="sdpa")``.

The packed tokens [T, H, Dh] are scattered into a zero-padded batch [B, H, Kmax, Dh]
(Kmax = ``max_seqlen``), attend with ``torch.nn.functional.scaled_dot_product_attention``
and a boolean key-padding mask (True = real token), and are gathered back. This is
what an encoder without the varlen kernels does (Vaswani et al. 2017, "Attention Is
All You Need", https://arxiv.org/abs/1706.03762, with padding masks), so a model built
with ``backend="sdpa"`` can be timed against the same model with the kernels by one
config value. The pad and the gather are counted, per attention call: a model that
kept its tokens padded between layers would pay them once instead.

No host synchronisation: the scatter positions come from ``cu_seqlens`` on the device
and the padded length from the host int ``max_seqlen``. Plain torch ops under autograd,
so ``torch.compile`` traces it without a custom op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["padded_sdpa"]


def padded_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Attention inside each packed sequence through padded SDPA.

    Args:
        q, k, v: packed [T, H, Dh].
        cu_seqlens: sequence starts [S + 1] int32, 0 first, last = T.
        max_seqlen: the padded length Kmax, at least the longest sequence.
        scale: factor on q.k.

    Returns:
        The output [T, H, Dh] in the dtype of q.
    """
    T, H, Dh = q.shape
    S = cu_seqlens.numel() - 1
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]  # [S]
    seg = torch.repeat_interleave(torch.arange(S, device=q.device), lengths, output_size=T)  # [T]
    pos = torch.arange(T, device=q.device) - cu[:-1][seg]  # [T], position inside its sequence
    mask = torch.arange(max_seqlen, device=q.device)[None, :] < lengths[:, None]  # [S, Kmax], True = real token

    def pad(t: torch.Tensor) -> torch.Tensor:
        buf = t.new_zeros(S, max_seqlen, H, Dh).index_put((seg, pos), t)  # [T, H, Dh] -> [S, Kmax, H, Dh]
        return buf.transpose(1, 2)  # [S, Kmax, H, Dh] -> [S, H, Kmax, Dh]

    o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask[:, None, None, :], scale=scale)
    return o.transpose(1, 2)[seg, pos]  # [S, H, Kmax, Dh] -> [S, Kmax, H, Dh] -> [T, H, Dh]
