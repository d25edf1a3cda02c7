"""Multi-head self-attention over dense, padded or packed (visible-only) tokens.

Multi-head attention of Vaswani et al. 2017 ("Attention Is All You Need",
https://arxiv.org/abs/1706.03762) in the ViT form (one fused ``qkv`` projection,
one output ``proj``; Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929),
with the parameter names of ``timm.layers.Attention`` so that LoRA targets
``qkv`` and ``proj`` by name and timm ViT weights load key for key.

Three input layouts, one output layout each:

* dense [B, N, D]: every token attends to every token (``scaled_dot_product_attention``);
* padded [B, N, D] with ``key_padding_mask`` [B, N] (True = real token): real tokens
  are packed, attend only to real tokens of their sample, and are scattered back;
  padded positions of the output are zero;
* packed [K, D] with ``cu_seqlens`` [B + 1]: the visible tokens of all samples one
  after another (see :func:`foundation.kernels.pack_visible`); attention stays
  inside each sample and goes through :func:`foundation.kernels.varlen_attention`
  (the Triton kernel on CUDA, the torch reference elsewhere).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError
from foundation.kernels import apply_act_bits, pack_visible, varlen_attention
from foundation.kernels.mesa import attention_core_8bit
from foundation.kernels.reference import reference_varlen_dropout
from foundation.kernels.varlen import BACKENDS

__all__ = ["Attention"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Args:
        dim: model width D.
        num_heads: heads H; D must be divisible by H (head dim Dh = D / H).
        qkv_bias: bias on the qkv projection.
        proj_bias: bias on the output projection.
        attn_drop: dropout on attention weights (training only). The fused kernel has
            no dropout, so with attn_drop > 0 packed inputs take a per-sample
            ``scaled_dot_product_attention`` path in training.
        proj_drop: dropout after the output projection.
        device: parameter device.
        dtype: parameter dtype.
        backend: varlen attention backend for packed / masked inputs, "auto",
            "triton" or "reference" (see :func:`foundation.kernels.varlen_attention`).
        act_bits: None/0 for full-precision saved activations, 8 to keep only 8-bit
            copies for the backward pass (Mesa, :func:`foundation.kernels.apply_act_bits`):
            the inputs of ``qkv`` and ``proj``, and q, k, v of the attention core
            (per-head scales; the core is recomputed in backward). While attention
            dropout is active the core keeps its full-precision state, since a
            recomputation would draw a different dropout mask.

    Raises:
        ConfigError: dim not divisible by num_heads, dropout outside [0, 1), unknown
            backend, backend="triton" with attn_drop > 0, or act_bits not None/0/8.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
        act_bits: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"Attention: dim = {dim} must be divisible by num_heads = {num_heads}")
        for name, p in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"Attention: {name} must be in [0, 1), received {p}")
        if backend not in BACKENDS:
            raise ConfigError(f"Attention: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend == "triton" and attn_drop > 0:
            raise ConfigError(
                f"Attention: backend='triton' has no attention dropout but attn_drop = {attn_drop}; "
                "set attn_drop=0.0 or backend='auto'"
            )
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop_p = attn_drop
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **factory)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **factory)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.act_bits: int | None = None
        apply_act_bits(self, act_bits)  # validates, swaps qkv / proj, sets self.act_bits

    def reset_parameters(self) -> None:
        """Re-initialise both projections (PyTorch's nn.Linear default)."""
        self.qkv.reset_parameters()
        self.proj.reset_parameters()

    def _core_8bit(self) -> bool:
        return self.act_bits == 8 and self.training and torch.is_grad_enabled() and self.attn_drop_p == 0

    def _attend_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        K, D = x.shape
        qkv = self.qkv(x).reshape(K, 3, self.num_heads, self.head_dim)  # [K, 3D] -> [K, 3, H, Dh]
        q, k, v = qkv.unbind(1)  # 3 x [K, H, Dh]
        if self.training and self.attn_drop_p > 0:
            o = reference_varlen_dropout(q, k, v, cu_seqlens, self.scale, self.attn_drop_p)
        else:

            if self._core_8bit():
                o = attention_core_8bit(q, k, v, self.scale, cu_seqlens, max_seqlen, self.backend)
            else:
                o = varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=self.scale, backend=self.backend)
        o = o.reshape(K, D)  # [K, H, Dh] -> [K, D]
        return self.proj_drop(self.proj(o))

    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: dense or padded tokens [B, N, D], or packed visible tokens [K, D].
            cu_seqlens: for packed x, sample starts [B + 1] int32 (0 first, last = K).
            max_seqlen: for packed x, the longest sample; computed from cu_seqlens when None.
            key_padding_mask: for padded x, [B, N] bool, True = real token, False = padding.

        Returns:
            Tokens in the layout of x: [B, N, D] (zeros at padded positions) or [K, D].

        Raises:
            ConfigError: layout and arguments disagree (packed x without cu_seqlens,
                both cu_seqlens and key_padding_mask, wrong width or mask shape).
        """
        if x.shape[-1] != self.dim:
            raise ConfigError(f"Attention: x has width {x.shape[-1]} but the layer was built with dim = {self.dim}")
        if cu_seqlens is not None:
            if key_padding_mask is not None:
                raise ConfigError(
                    "Attention: pass either cu_seqlens (packed x) or key_padding_mask (padded x), not both"
                )
            if x.dim() != 2:
                raise ConfigError(f"Attention: with cu_seqlens x must be packed [K, D], received {list(x.shape)}")
            if max_seqlen is None:
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
            return self._attend_packed(x, cu_seqlens, max_seqlen)
        if x.dim() != 3:
            raise ConfigError(
                f"Attention: x must be [B, N, D] (or packed [K, D] with cu_seqlens), received {list(x.shape)}"
            )
        B, N, D = x.shape
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, N):
                raise ConfigError(
                    f"Attention: key_padding_mask must be bool [B, N] = {[B, N]} (True = real token), received "
                    f"{key_padding_mask.dtype} {list(key_padding_mask.shape)}"
                )
            packed, cu, longest = pack_visible(x, key_padding_mask)  # [B, N, D] -> [K, D]
            y = self._attend_packed(packed, cu, longest)
            out = x.new_zeros(B, N, D)
            return out.masked_scatter(key_padding_mask.unsqueeze(-1), y)  # [K, D] -> [B, N, D]
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3D] -> [B, N, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x [B, H, N, Dh]
        if self._core_8bit():
            o = attention_core_8bit(q, k, v, self.scale)
        else:
            drop = self.attn_drop_p if self.training else 0.0
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        o = o.transpose(1, 2).reshape(B, N, D)  # [B, H, N, Dh] -> [B, N, D]
        return self.proj_drop(self.proj(o))
