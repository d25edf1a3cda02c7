"""Fourier-KArAt: attention whose row operator is a learnable Fourier KAN instead of softmax.

Maity et al., "Kolmogorov-Arnold Attention: Is Learnable Attention Better For
Vision Transformers?", https://arxiv.org/abs/2503.10632 (arXiv number as we recall
it; unverified). For each head and each query row of scores s = q K^T / sqrt(Dh)
[N], softmax is replaced by a learnable operator Phi: R^N -> R^N, a KAN layer with
a Fourier basis (grid G = 1 or 3) made low-rank (r about 12):

    z = U . W . flatten(F(s))       F(s)[k] = [cos(m s_k), sin(m s_k)]_{m=1..G}   [N, 2G]
    W: [r, N_max * 2G] (``attn_down``),  U: [N_max, r] (``attn_up``)
    weights = z / sum_j |z_j|        (row_norm="l1"; the paper projects rows back to
                                      unit l1 norm (unverified); "none" skips it)

Our choices (unverified): one operator shared by all heads of the layer; the
operator is defined on ``max_tokens`` key positions and shorter rows (or padded
keys) get zero basis features and zero weights, which is the same as padding the
row to ``max_tokens`` with masked keys. Both matrices are ``nn.Linear`` modules,
so peft can target them. Memory: the basis is [B, H, N, N_max, 2G], about
2G times the softmax attention matrix (Maity et al. 2025, "Kolmogorov-Arnold Attention",
https://arxiv.org/abs/2503.10632, report 2.5-3x for their setup; unverified).

Same constructor and forward signature as :class:`foundation.layers.attention.Attention`:
dense [B, N, D], padded [B, N, D] with ``key_padding_mask`` (True = real token),
or packed [K, D] with ``cu_seqlens``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError
from foundation.kernels import unpack
from foundation.layers.kan_basis import fourier_basis

__all__ = ["KArAt"]

ROW_NORMS = ("l1", "none")


class KArAt(nn.Module):
    """Multi-head self-attention with a learnable Fourier-KAN row operator (Fourier-KArAt).

    Args:
        dim: model width D (divisible by num_heads).
        num_heads: heads H.
        qkv_bias: bias on the qkv projection.
        proj_bias: bias on the output projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        device: parameter device.
        dtype: parameter dtype.
        max_tokens: N_max, the longest row the operator covers (unverified default 256).
        grid_size: Fourier frequencies G (paper: 1 or 3; default 3).
        rank: r of the low-rank operator (paper: about 12).
        row_norm: "l1" (rows of |weights| sum to 1) or "none".

    Raises:
        ConfigError: dim not divisible by num_heads, dropout outside [0, 1), grid_size,
            rank or max_tokens < 1, or unknown row_norm.
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
        max_tokens: int = 256,
        grid_size: int = 3,
        rank: int = 12,
        row_norm: str = "l1",
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"KArAt: dim = {dim} must be divisible by num_heads = {num_heads}")
        for name, p in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"KArAt: {name} must be in [0, 1), received {p}")
        for name, v in (("max_tokens", max_tokens), ("grid_size", grid_size), ("rank", rank)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"KArAt: {name} must be a positive integer, received {v!r}")
        if row_norm not in ROW_NORMS:
            raise ConfigError(f"KArAt: unknown row_norm {row_norm!r}; valid: {', '.join(ROW_NORMS)}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.max_tokens, self.grid_size, self.rank, self.row_norm = max_tokens, grid_size, rank, row_norm
        kw = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **kw)
        self.attn_down = nn.Linear(max_tokens * 2 * grid_size, rank, bias=False, **kw)
        self.attn_up = nn.Linear(rank, max_tokens, bias=False, **kw)
        self.attn_drop = nn.Dropout(attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **kw)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def reset_parameters(self) -> None:
        """nn.Linear's default init for every projection and both operator matrices."""
        for m in (self.qkv, self.attn_down, self.attn_up, self.proj):
            m.reset_parameters()

    def row_operator(self, scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the learnable operator to every row of scores.

        Args:
            scores: [..., N, N] (query rows, key columns), N <= max_tokens.
            key_mask: [..., N] broadcastable to the key axis, True = real key, or None.

        Returns:
            Attention weights [..., N, N]; masked keys get weight 0.
        """
        n = scores.shape[-1]
        phi = fourier_basis(scores, self.grid_size)  # [..., N, N] -> [..., N, N, 2G]
        if key_mask is not None:
            phi = phi * key_mask.unsqueeze(-2).unsqueeze(-1).to(phi.dtype)  # zero features of padded keys
        phi = F.pad(phi, (0, 0, 0, self.max_tokens - n))  # [..., N, N, 2G] -> [..., N, N_max, 2G]
        z = self.attn_up(self.attn_down(phi.flatten(-2)))  # [..., N, N_max * 2G] -> [..., N, r] -> [..., N, N_max]
        z = z[..., :n]  # -> [..., N, N]
        if key_mask is not None:
            z = z * key_mask.unsqueeze(-2).to(z.dtype)
        if self.row_norm == "l1":
            z = z / (z.abs().sum(-1, keepdim=True) + 1e-6)
        return z

    def _attend(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, N, D = x.shape
        if N > self.max_tokens:
            raise ConfigError(
                f"KArAt: {N} tokens per sample but the operator covers max_tokens = {self.max_tokens}; "
                f"build the layer with max_tokens >= {N}"
            )
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3D] -> [B, N, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x [B, H, N, Dh]
        scores = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, N, N]
        mask = key_mask[:, None, :] if key_mask is not None else None  # [B, N] -> [B, 1, N]
        attn = self.attn_drop(self.row_operator(scores, mask))
        o = (attn @ v).transpose(1, 2).reshape(B, N, D)  # [B, H, N, Dh] -> [B, N, H, Dh] -> [B, N, D]
        o = self.proj_drop(self.proj(o))
        return o if key_mask is None else o * key_mask.unsqueeze(-1).to(o.dtype)

    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: dense or padded tokens [B, N, D], or packed tokens [K, D].
            cu_seqlens: for packed x, sample starts [B + 1] (0 first, last = K).
            max_seqlen: for packed x, the longest sample (computed when None).
            key_padding_mask: for padded x, [B, N] bool, True = real token, False = padding.

        Returns:
            Tokens in the layout of x: [B, N, D] (zeros at padded positions) or [K, D].

        Raises:
            ConfigError: layout and arguments disagree, or a sample is longer than max_tokens.
        """
        if x.shape[-1] != self.dim:
            raise ConfigError(f"KArAt: x has width {x.shape[-1]} but the layer was built with dim = {self.dim}")
        if cu_seqlens is not None:
            if key_padding_mask is not None:
                raise ConfigError("KArAt: pass either cu_seqlens (packed x) or key_padding_mask (padded x), not both")
            if x.dim() != 2:
                raise ConfigError(f"KArAt: with cu_seqlens x must be packed [K, D], received {list(x.shape)}")
            padded, mask = unpack(x, cu_seqlens, max_seqlen)  # [K, D] -> [B, N, D], [B, N]
            return self._attend(padded, mask)[mask]  # [B, N, D] -> [K, D]
        if x.dim() != 3:
            raise ConfigError(
                f"KArAt: x must be [B, N, D] (or packed [K, D] with cu_seqlens), received {list(x.shape)}"
            )
        if key_padding_mask is not None and (
            key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != tuple(x.shape[:2])
        ):
            raise ConfigError(
                f"KArAt: key_padding_mask must be bool [B, N] = {list(x.shape[:2])} (True = real token), received "
                f"{key_padding_mask.dtype} {list(key_padding_mask.shape)}"
            )
        return self._attend(x, key_padding_mask)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, max_tokens={self.max_tokens}, "
            f"grid_size={self.grid_size}, rank={self.rank}"
        )
