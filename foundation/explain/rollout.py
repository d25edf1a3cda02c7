"""Attention rollout for the suite's flat transformers (DeeperBrain's packed blocks).

Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (https://arxiv.org/abs/2005.00928): per
layer, the head-averaged attention plus the identity (the residual path), rows renormalised,
``A_l = norm(0.5 * mean_h(softmax(q k^T / sqrt(Dh))) + 0.5 * I)``; the rollout is ``A_L ... A_1``. With mean
pooling the output reads every token equally, so a token's relevance is the mean over rows of the rollout.

The attention probabilities are recomputed from each block's ``attn.qkv`` on the input the block's attention
received (a forward pre-hook), per sample (packed tokens, ``cu_seqlens``). Hiera (SLIM-Brain) pools tokens
between stages, so a token-to-token rollout through it is not defined; it is refused.
"""
from __future__ import annotations

import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.layers.attention import Attention

__all__ = ["attention_rollout", "rollout_matrices"]


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
