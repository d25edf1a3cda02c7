"""SLIM-Brain model: Hiera4D context encoder, EMA target encoder and a JEPA predictor.

JEPA after Assran et al., "Self-Supervised Learning from Images with a
Joint-Embedding Predictive Architecture" (I-JEPA, https://arxiv.org/abs/2301.08243):
the context encoder sees the kept mask units only; the target encoder (an
exponential moving average of the context encoder, no gradients) sees every
foreground unit (background-only units are deleted from both); the predictor
maps context tokens plus position-embedded mask tokens to the target encoder's
layer-normed features at the deleted units.

EMA schedule (:func:`ema_momentum`): linear from ``ema_start`` to ``ema_end``
over ``ema_steps`` optimizer steps (I-JEPA: 0.996 -> 1.0), applied in
:meth:`SlimBrain.on_step_end`, which the engine calls after every optimizer step.
The update reads both encoders' full parameters, so it needs DeepSpeed ZeRO
stage <= 2 (ZeRO-3 partitions parameters; the hook raises TrainingError there).

The average itself is kept in float32 under every precision (``ema_master``, a
persistent buffer per target parameter, so checkpoints and resume carry it): DeepSpeed's
bf16 mode casts the target's parameters to bf16, where ``lerp_`` at momentum 0.996 rounds
most updates away (a step of 0.4% of a weight's distance to the encoder is below bf16's
resolution of 2^-8 relative). The target's parameters receive a copy of the master after
each update, in their own dtype, for the forward.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError, TrainingError
from foundation.hub.mixin import HubMixin
from foundation.layers.block import Block
from foundation.modalities.fmri.hiera4d import Hiera4D, Hiera4DConfig

__all__ = ["SlimBrainConfig", "SlimBrain", "JepaPredictor", "ema_momentum"]


@dataclass
class SlimBrainConfig(Hiera4DConfig):
    """Hiera4D encoder fields plus the predictor and EMA schedule."""

    predictor_dim: int = field(default=192, metadata={"help": "predictor width (unverified)"})
    predictor_depth: int = field(default=4, metadata={"help": "predictor blocks (unverified)"})
    predictor_heads: int = field(default=6, metadata={"help": "predictor heads"})
    ema_start: float = field(default=0.996, metadata={"help": "EMA momentum at step 0 (I-JEPA)"})
    ema_end: float = field(default=1.0, metadata={"help": "EMA momentum after ema_steps (I-JEPA)"})
    ema_steps: int = field(default=10000, metadata={"help": "optimizer steps of the linear EMA ramp (set to train.steps)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_start <= self.ema_end <= 1.0:
            raise ConfigError(f"SlimBrainConfig: need 0 <= ema_start ({self.ema_start}) <= ema_end ({self.ema_end}) <= 1")
        if self.ema_steps < 1:
            raise ConfigError(f"SlimBrainConfig.ema_steps must be >= 1, received {self.ema_steps}")
        if self.predictor_dim % self.predictor_heads:
            raise ConfigError(f"SlimBrainConfig: predictor_dim {self.predictor_dim} not divisible by predictor_heads {self.predictor_heads}")


def ema_momentum(step: int, start: float, end: float, steps: int) -> float:
    """Linear ramp start -> end over ``steps``, then ``end``."""
    return end if step >= steps else start + (end - start) * step / steps


class JepaPredictor(nn.Module):
    """Predicts target features at deleted units from context tokens (packed per sample).

    Position p of a final-stage token = unit index * T_f + token index inside the unit.
    """

    def __init__(self, embed_dim: int, n_positions: int, dim: int, depth: int, heads: int, mlp: str, activation: str, backend: str) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(n_positions, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp=mlp, activation=activation, attn_kwargs={"backend": backend}) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, embed_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, ctx: torch.Tensor, ctx_pos: list[torch.Tensor], tgt_pos: list[torch.Tensor]) -> torch.Tensor:
        """ctx [Kc, D] packed context tokens; per-sample positions of context [Kc_b] and targets [Kt_b] -> [sum Kt_b, D]."""
        h = self.embed(ctx)
        pieces, start, rows, lens = [], 0, [], []
        for cp, tp in zip(ctx_pos, tgt_pos):
            pieces += [h[start:start + len(cp)] + self.pos_embed[cp], self.mask_token + self.pos_embed[tp]]
            first = sum(lens) + len(cp)  # the sample's target rows follow its context rows
            rows.append(torch.arange(first, first + len(tp), device=h.device))
            lens.append(len(cp) + len(tp))  # host ints (the index tensors' sizes): no device read
            start += len(cp)
        x = torch.cat(pieces)  # [sum (Kc_b + Kt_b), Dp], one sample after another
        cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(device=x.device, dtype=torch.int32)
        for blk in self.blocks:
            x = blk(x, cu, max(lens))
        return self.out(self.norm(x.index_select(0, torch.cat(rows))))  # the target rows [sum Kt_b, Dp]


class SlimBrain(nn.Module, HubMixin):
    """Context encoder (``encoder``), EMA target encoder (``target``) and predictor.

    ``forward_features`` and ``embed_dim`` are the context encoder's (what probes and fine-tuning use).
    """

    model_name = "slim-brain"
    config_class = SlimBrainConfig

    def __init__(self, config: SlimBrainConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Hiera4D(config)
        self.target = copy.deepcopy(self.encoder)
        self.target.requires_grad_(False)
        self.ema_master = nn.Module()  # float32 EMA of the target, one buffer per target parameter
        for name, t in self.target.named_parameters():
            self.ema_master.register_buffer(name.replace(".", "__"), t.detach().float().clone())
        self.embed_dim = self.encoder.embed_dim
        self.t_f = self.encoder.final_unit_tokens
        self.predictor = JepaPredictor(self.embed_dim, self.encoder.n_units * self.t_f, config.predictor_dim,
                                       config.predictor_depth, config.predictor_heads, config.mlp, config.activation, config.backend)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Context-encoder tokens [B, K * T_f, D] (see :meth:`Hiera4D.forward_features`)."""
        return self.encoder.forward_features(x, keep)

    def _positions(self, units: torch.Tensor) -> torch.Tensor:
        j = torch.arange(self.t_f, device=units.device)
        return (units[:, None] * self.t_f + j).flatten()  # [K] -> [K * T_f]

    def forward(self, x: torch.Tensor, keep: list[torch.Tensor], drop: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One JEPA prediction.

        Args:
            x: [B, C, T, Z, Y, X]. keep: per sample, kept (context) unit indices. drop: per sample, target unit indices.

        Returns:
            (prediction [M, D], layer-normed target [M, D], target std: std over tokens of the raw target features, mean over D),
            M = sum over samples of len(drop) * T_f.
        """
        ctx, _ = self.encoder.forward_units(x, keep)
        pred = self.predictor(ctx.flatten(0, 1), [self._positions(k) for k in keep], [self._positions(d) for d in drop])
        with torch.no_grad():
            union = [torch.cat([k, d]) for k, d in zip(keep, drop)]
            full, _ = self.target.forward_units(x, union)
            pieces, start = [], 0
            for k, d in zip(keep, drop):  # the target units come after the kept ones in each sample's union
                n, m = len(k), len(d)
                pieces.append(full[start + n:start + n + m])
                start += n + m
            tgt = torch.cat(pieces).flatten(0, 1)  # [sum m_b, T_f, D] -> [M, D]
            std = tgt.float().std(dim=0).mean()
            tgt = F.layer_norm(tgt, tgt.shape[-1:])
        return pred, tgt, std

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA update of the target encoder after optimizer step ``step``."""
        m = ema_momentum(step, self.config.ema_start, self.config.ema_end, self.config.ema_steps)
        pairs = list(zip(self.target.parameters(), self.encoder.parameters()))
        if any(hasattr(p, "ds_id") for _, p in pairs[:1]):
            raise TrainingError(
                "SlimBrain EMA target: parameters are partitioned by DeepSpeed ZeRO-3; set deepspeed.zero_stage <= 2"
            )
        for (name, t), (_, s) in zip(self.target.named_parameters(), self.encoder.named_parameters()):
            master = getattr(self.ema_master, name.replace(".", "__"))
            if master.dtype != torch.float32:  # a buffer_dtype setting cast it: the average continues in fp32
                master.data = master.data.float()
            master.lerp_(s.detach().float(), 1.0 - m)
            t.copy_(master)  # rounded to the target's compute dtype
