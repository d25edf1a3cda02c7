"""Pre-norm transformer block with attention, MLP and activation chosen by name.

The ViT block (Dosovitskiy et al., https://arxiv.org/abs/2010.11929; timm's
``Block``): x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x))),
with stochastic depth (Huang et al., "Deep Networks with Stochastic Depth",
https://arxiv.org/abs/1603.09382). Attention is ``"softmax"``
(:class:`~foundation.layers.attention.Attention`) or ``"karat"``
(:class:`~foundation.layers.karat.KArAt`); the MLP is any kind of
:func:`~foundation.layers.create_mlp.make_mlp`. Every weight matrix lives in an
``nn.Linear`` (or subclass), so peft LoRA can target ``qkv``, ``proj``, ``fc1``,
``fc2`` (and ``base``/``spline``, ``linear``, ``attn_down``/``attn_up``) by name.

Tokens come dense [B, N, D] or packed [K, D] with ``cu_seqlens`` (visible tokens
of variable-length samples one after another); drop-path then drops whole samples.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.errors import ConfigError, did_you_mean
from foundation.layers.attention import Attention
from foundation.layers.create_mlp import make_mlp
from foundation.layers.karat import KArAt

__all__ = ["ATTENTIONS", "Block", "BlockConfig", "drop_path"]

ATTENTIONS: dict[str, type[nn.Module]] = {"karat": KArAt, "softmax": Attention}


def drop_path(
    x: torch.Tensor, drop_prob: float, training: bool, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for whole samples, scale the rest by 1 / (1 - p).

    Args:
        x: branch output, dense [B, ...] (sample = first axis) or packed [K, D] with ``cu_seqlens``.
        drop_prob: probability p of dropping a sample's branch.
        training: drop only in training.
        cu_seqlens: for packed x, sample starts [B + 1]; tokens of one sample share one draw.

    Returns:
        A tensor shaped like x.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    if cu_seqlens is None:
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # [B, 1, ..., 1]
    else:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=x.device, dtype=torch.long)
        per_sample = x.new_empty(lengths.numel()).bernoulli_(keep)  # [B]
        mask = torch.repeat_interleave(per_sample, lengths).unsqueeze(-1)  # [B] -> [K] -> [K, 1]
    return x * mask / keep


@dataclass
class BlockConfig:
    """Plain-data configuration of a :class:`Block` (round-trips YAML and config.json)."""

    dim: int = 384  # model width D
    num_heads: int = 6  # attention heads H (D divisible by H)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    attention: str = "softmax"  # "softmax" or "karat"
    mlp: str = "mlp"  # an MLPS name: mlp, kan, skan, afkan, noble
    activation: str = "gelu"  # an ACTIVATIONS name
    qkv_bias: bool = True  # bias on the qkv projection
    proj_drop: float = 0.0  # dropout after the attention projection and in the MLP
    attn_drop: float = 0.0  # dropout on attention weights
    drop_path: float = 0.0  # stochastic-depth probability of each residual branch
    attn_kwargs: dict[str, Any] = field(default_factory=dict)  # extra attention keywords (e.g. max_tokens)
    mlp_kwargs: dict[str, Any] = field(default_factory=dict)  # extra make_mlp keywords (e.g. rank, grid_size)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ConfigError(
                f"BlockConfig.attention: unknown attention {self.attention!r}; "
                f"{did_you_mean(str(self.attention), ATTENTIONS)}"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"BlockConfig.drop_path must be in [0, 1), received {self.drop_path}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"BlockConfig.mlp_ratio must be > 0, received {self.mlp_ratio}")


class Block(nn.Module):
    """Pre-norm transformer block.

    Args:
        dim: model width D.
        num_heads: attention heads H.
        mlp_ratio: MLP hidden width = round(mlp_ratio * D).
        attention: "softmax" or "karat".
        mlp: MLP kind registered in MLPS ("mlp", "kan", "skan", "afkan", "noble").
        activation: activation name (or class) for the MLP.
        qkv_bias: bias on the qkv projection.
        proj_drop: dropout after the attention projection and inside the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth probability.
        norm_layer: normalisation class (default nn.LayerNorm).
        attn_kwargs: extra keywords of the attention class.
        mlp_kwargs: extra keywords of the MLP kind.
        device: parameter device.
        dtype: parameter dtype.

    Raises:
        ConfigError: unknown attention, MLP kind or activation, or a bad keyword.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        attention: str = "softmax",
        mlp: str = "mlp",
        activation: str | type[nn.Module] | None = "gelu",
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attn_kwargs: dict[str, Any] | None = None,
        mlp_kwargs: dict[str, Any] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ConfigError(f"Block: unknown attention {attention!r}; {did_you_mean(str(attention), ATTENTIONS)}")
        if not 0.0 <= drop_path < 1.0:
            raise ConfigError(f"Block: drop_path must be in [0, 1), received {drop_path}")
        attn_cls = ATTENTIONS[attention]
        fixed = {"dim", "num_heads", "qkv_bias", "attn_drop", "proj_drop", "device", "dtype"}  # set by the block
        accepted = set(inspect.signature(attn_cls).parameters) - fixed
        unknown = sorted(set(attn_kwargs or {}) - accepted)
        if unknown:
            raise ConfigError(
                f"Block: attention {attention!r} does not take {unknown}; "
                f"attn_kwargs may hold: {', '.join(sorted(accepted))}"
            )
        kw = {"device": device, "dtype": dtype}
        self.drop_path = drop_path
        self.norm1 = norm_layer(dim, **kw)
        self.attn = attn_cls(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **kw, **(attn_kwargs or {})
        )
        self.norm2 = norm_layer(dim, **kw)
        self.mlp = make_mlp(
            mlp, dim, round(dim * mlp_ratio), dim, activation, where="Block mlp", drop=proj_drop,
            **kw, **(mlp_kwargs or {}),
        )

    @classmethod
    def from_config(
        cls, cfg: BlockConfig, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "Block":
        """Build a block from a :class:`BlockConfig`."""
        d = asdict(cfg)
        return cls(**d, device=device, dtype=dtype)

    def forward(
        self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: dense tokens [B, N, D], or packed tokens [K, D] with ``cu_seqlens``.
            cu_seqlens: for packed x, sample starts [B + 1] int32 (0 first, last = K).
            max_seqlen: for packed x, the longest sample (computed when None).

        Returns:
            Tokens in the layout of x.
        """
        x = x + drop_path(self.attn(self.norm1(x), cu_seqlens, max_seqlen), self.drop_path, self.training, cu_seqlens)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training, cu_seqlens)
