"""Attention rollout for the suite's transformers: DeeperBrain's packed blocks and SLIM-Brain's Hiera4D.

Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (https://arxiv.org/abs/2005.00928): per
layer, the head-averaged attention plus the identity (the residual path), rows renormalised,
``A_l = norm(0.5 * mean_h(softmax(q k^T / sqrt(Dh))) + 0.5 * I)``; the rollout is ``A_L ... A_1``. With mean
pooling the output reads every token equally, so a token's relevance is the mean over rows of the rollout.

The attention probabilities are recomputed from each block's ``attn.qkv`` on the input the block's attention
received (a forward pre-hook), per sample (packed tokens, ``cu_seqlens``).

Hiera4D (:func:`hiera_rollout`) pools tokens at stage transitions: the first block of a stage pools the queries
(max over ``q_stride`` groups of a unit's tokens) and its residual (max over the same groups of ``proj(norm x)``),
so its attention maps ``T`` input tokens to ``T / s`` output tokens. The rollout stays defined as a product of
rectangular row-stochastic maps: per block ``A = 0.5 * mean_h(P) + 0.5 * R`` with ``P [T/s, T]`` the head
attention (inside a mask unit, or over the whole sample in global stages) and ``R`` the residual path: the
identity in a block that does not pool, and in a pooling block the share of the residual's channels whose max
came from each of the ``s`` pooled tokens (what the residual actually carries from each). Only the relevance row
is carried back (``v <- v A``, starting from the mean over the final tokens), never a full token x token
matrix, so mask-unit stages stay block-diagonal.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.layers.attention import Attention

__all__ = ["attention_rollout", "hiera_of", "hiera_rollout", "rollout_matrices"]


def _attention_blocks(encoder: nn.Module) -> list[nn.Module]:
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or not all(isinstance(getattr(b, "attn", None), Attention) for b in blocks):
        raise ConfigError(f"rollout: {type(encoder).__name__} has no stack of softmax attention blocks (the suite's "
                          "Block); attention rollout applies to DeeperBrain. Use --method ig or occlusion instead")
    return list(blocks)


@torch.no_grad()
def rollout_matrices(encoder: nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per sample, the rollout ``[N_b, N_b]`` over its tokens (packed order) for one ``forward_features`` pass."""
    from foundation.finetune.features import encode

    blocks = _attention_blocks(encoder)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [b.attn.register_forward_pre_hook(lambda _m, args: captured.append((args[0], args[1]))) for b in blocks]
    try:
        encode(encoder, inputs)
    finally:
        for h in hooks:
            h.remove()
    cu = captured[0][1].long()
    out = []
    for b in range(len(cu) - 1):
        a, e = int(cu[b]), int(cu[b + 1])
        R = torch.eye(e - a)
        for blk, (x, _) in zip(blocks, captured):
            att = blk.attn
            qkv = att.qkv(x[a:e]).reshape(e - a, 3, att.num_heads, att.head_dim)  # [N, 3D] -> [N, 3, H, Dh]
            q, k = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1)  # [H, N, Dh]
            probs = (q @ k.transpose(1, 2) * att.scale).softmax(-1).mean(0)  # [H, N, N] -> [N, N]
            A = 0.5 * probs.float() + 0.5 * torch.eye(e - a)
            A = A / A.sum(-1, keepdim=True)
            R = A @ R
        out.append(R)
    return out


def attention_rollout(encoder: nn.Module, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor) -> torch.Tensor:
    """Token relevance of a DeeperBrain encoder spread over the input: ``x [B, C, T]`` -> ``[B, C, T]``.

    Each patch's relevance (mean rollout row) is divided evenly over its samples, so a channel's sum over
    time is the summed relevance of its tokens; padded channels get 0.
    """
    P = x.shape[-1] // encoder.config.patch_size
    mats = rollout_matrices(encoder, {"x": x, "pos": pos, "chan_mask": chan_mask})
    valid = encoder.valid_tokens(chan_mask, P)  # [B, N]
    out = torch.zeros(x.shape[0], x.shape[1] * P)
    for b, R in enumerate(mats):
        out[b, valid[b]] = R.mean(0)
    out = out.view(x.shape[0], x.shape[1], P, 1) / encoder.config.patch_size  # [B, N] -> [B, C, P, 1]
    return out.expand(-1, -1, -1, encoder.config.patch_size).reshape(x.shape)  # -> [B, C, T]


def hiera_of(encoder: nn.Module) -> nn.Module:
    """The Hiera4D that encodes: the encoder itself, or SLIM-Brain's context encoder (``.encoder``).

    Raises:
        ConfigError: neither.
    """
    from foundation.modalities.fmri.hiera4d import Hiera4D

    for m in (encoder, getattr(encoder, "encoder", None)):
        if isinstance(m, Hiera4D):
            return m
    raise ConfigError(f"rollout: {type(encoder).__name__} is not a Hiera4D encoder (nor SLIM-Brain around one)")


@torch.no_grad()
def hiera_rollout(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Token relevance of a Hiera4D (or SLIM-Brain) encoder spread over its input voxels.

    Args:
        encoder: Hiera4D or SLIM-Brain.
        x: ``[B, C, T, Z, Y, X]`` (every mask unit kept).

    Returns:
        ``[B, 1, T, Z, Y, X]``: each input token's rollout relevance (the mean over the final tokens of the
        rollout) divided evenly over its patch's voxels, so each sample's map sums to 1.
    """
    from foundation.explain.attnlrp import unit_attention_probs

    hiera = hiera_of(encoder)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [b.attn.register_forward_pre_hook(lambda _m, args: seen.append((args[0], args[1]))) for b in hiera.blocks]
    try:
        h, _ = hiera.forward_units(x)
    finally:
        for hk in hooks:
            hk.remove()
    B = x.shape[0]
    U = h.shape[0]
    v = torch.full(h.shape[:2], 1.0 / (U // B * h.shape[1]))  # [U, T_f]: mean over a sample's final tokens
    for blk, (xn, cu) in reversed(list(zip(hiera.blocks, seen))):
        att = blk.attn
        s = att.q_stride
        T = xn.shape[1]
        probs, _ = unit_attention_probs(att, xn, cu)
        attn_part = []
        for P, (a, b) in zip(probs, zip(cu[:-1].tolist(), cu[1:].tolist())):
            if att.use_mask_unit_attn:
                attn_part.append(torch.einsum("uq,uqk->uk", v[a:b], P.float().mean(1)))  # [U_b, T]
            else:
                attn_part.append((v[a:b].reshape(1, -1) @ P.float().mean(0)).reshape(b - a, T))
        res = v
        if s > 1:  # the pooled residual: share of channels whose max came from each of the s tokens
            y = blk.proj(xn).view(U, s, T // s, -1)  # [U, s, T/s, D']
            share = torch.nn.functional.one_hot(y.argmax(1), s).float().mean(2).permute(0, 2, 1)  # [U, s, T/s]
            res = (v[:, None, :] * share).reshape(U, T)
        v = 0.5 * torch.cat(attn_part) + 0.5 * res
    # unit-major token order -> the token grid -> voxels
    c = hiera.config
    grid = torch.arange(math.prod(c.tokens), dtype=torch.float64).view(1, *c.tokens, 1)
    order = hiera._to_units(grid).reshape(-1).long()  # [U_b * T_u]: row-major token index of each slot
    per = U // B
    out = torch.zeros(B, math.prod(c.tokens), dtype=v.dtype)
    out[:, order] = v.reshape(B, per * v.shape[1])
    out = out.view(B, 1, *c.tokens)
    stride = tuple(c.patch_stride)
    for d, st in enumerate(stride):
        out = out.repeat_interleave(st, dim=2 + d)
    out = out / math.prod(stride)
    pad = [0] * (2 * len(stride))
    for d, (have, want) in enumerate(zip(out.shape[2:], x.shape[2:])):
        pad[2 * (len(stride) - 1 - d) + 1] = want - have  # tokens that do not cover the grid's edge: no relevance
    return torch.nn.functional.pad(out, pad)
