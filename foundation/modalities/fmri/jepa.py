"""The SLIM-Brain JEPA objective: mask-unit deletion, smooth-L1 on layer-normed EMA-target features.

I-JEPA (Assran et al., https://arxiv.org/abs/2301.08243) on Hiera mask units:
per sample, ``mask_ratio`` (about 70%, as SLIM-Brain deletes; unverified) of the foreground mask units
are deleted from the context encoder's input and become the prediction targets;
background-only units (``batch["unit_fg"]`` False) are deleted from every encoder.
Loss: ``smooth_l1(prediction, layer_norm(target), beta)``. The target features'
std over tokens is logged as ``target_std``; when it falls below
``collapse_std`` a warning is logged (representation collapse: the EMA target
maps everything to one point), and the run goes on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foundation.data.masking import sample_keep
from foundation.errors import ConfigError, DataError

__all__ = ["JepaConfig", "JepaObjective"]

log = logging.getLogger(__name__)


@dataclass
class JepaConfig:
    mask_ratio: float = field(default=0.7, metadata={"help": "share of foreground mask units deleted (targets)"})
    beta: float = field(default=1.0, metadata={"help": "smooth-L1 beta"})
    collapse_std: float = field(default=0.01, metadata={"help": "log a collapse warning when target_std falls below this"})

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"objective.mask_ratio must be in (0, 1), received {self.mask_ratio}")
        if self.beta <= 0:
            raise ConfigError(f"objective.beta must be > 0, received {self.beta}")


class JepaObjective(nn.Module):
    """``forward(model, batch) -> (loss, {"target_std", "context_units", "target_units"})``.

    ``batch``: {"x": [B, C, T, Z, Y, X], "unit_fg": [B, U] bool, ...}.
    """

    config_class = JepaConfig

    def __init__(self, config: JepaConfig) -> None:
        super().__init__()
        self.config = config

    def prepare(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Check the foreground units and draw the masks (data-dependent; runs before the compiled region).

        Returns:
            The batch with ``keep`` and ``drop`` (B 1-D tensors of context and target unit indices) added.

        Raises:
            DataError: the data's unit count differs from the encoder's, or a window has < 2 foreground units.
        """
        fg = batch["unit_fg"].bool()
        n_units = model.encoder.n_units
        if fg.shape[1] != n_units:
            raise DataError(
                f"JEPA: the data gives {fg.shape[1]} mask units per window, the encoder has {n_units}; "
                "set data.unit_size = model.patch_stride * model.mask_unit_size and data.window/grid = model.input_size"
            )
        n_fg = fg.sum(1)
        if int(n_fg.min()) < 2:
            raise DataError(
                f"JEPA: a window has {int(n_fg.min())} foreground mask unit(s); need >= 2 (one context, one target); "
                "check the brain mask or use smaller mask units"
            )
        keep, drop = sample_keep(fg, self.config.mask_ratio, keep_one_masked=True)
        return {**batch, "keep": keep, "drop": drop}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "keep" not in batch:
            batch = self.prepare(model, batch)
        keep, drop = batch["keep"], batch["drop"]
        pred, tgt, std = model(batch["x"], keep, drop)
        loss = F.smooth_l1_loss(pred.float(), tgt.float(), beta=self.config.beta)
        self._last_std = std.detach()  # the collapse check reads it once per optimizer step (on_step_end)
        metrics = {
            "target_std": std.detach(),
            "context_units": torch.tensor(float(sum(len(k) for k in keep)) / len(keep)),
            "target_units": torch.tensor(float(sum(len(d) for d in drop)) / len(drop)),
        }
        return loss, metrics

    def on_step_end(self, step: int) -> None:
        """Log a warning when the last micro-batch's target std fell below ``collapse_std``."""
        std = getattr(self, "_last_std", None)
        if std is not None and float(std) < self.config.collapse_std:
            log.warning("JEPA target features collapsing: target_std %.2e < collapse_std %.2e at step %d",
                        float(std), self.config.collapse_std, step)
