"""DeeperBrain's pretraining objective: masked EEG reconstruction + neurodynamics statistics prediction.

DeeperBrain ("DeeperBrain: a neuro-grounded EEG foundation model", arXiv link unverified):
loss = SmoothL1_beta(reconstruction of masked patches, the patches (scaled like the model's input))
     + stats_weight * SmoothL1(statistics predicted from the masked input, z-scored statistics of
       the unmasked window), with beta = 1 and stats_weight = 1. ``stats_weight: 0`` is the
ablation "reconstruction only". The mask ratio default 0.5 is (unverified).

Masks are drawn by :func:`foundation.data.masking.sample_keep` from torch's global RNG (which the engine
saves and restores on resume) over the real channels' tokens only; padded channels are neither visible
nor reconstructed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from foundation.data.masking import sample_keep
from foundation.errors import ConfigError, DataError

__all__ = ["DeeperBrainObjectiveConfig", "DeeperBrainObjective"]


@dataclass
class DeeperBrainObjectiveConfig:
    """Loss weights and masking."""

    mask_ratio: float = field(default=0.5, metadata={"help": "share of real tokens deleted before the encoder (unverified)"})
    recon_beta: float = field(default=1.0, metadata={"help": "smooth-L1 beta of the reconstruction loss"})
    stats_weight: float = field(default=1.0, metadata={"help": "weight of the statistics loss (0: reconstruction only)"})
    stats_beta: float = field(default=1.0, metadata={"help": "smooth-L1 beta of the statistics loss"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"objective.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.recon_beta <= 0 or self.stats_beta <= 0 or self.stats_weight < 0:
            raise ConfigError(f"objective: need recon_beta > 0, stats_beta > 0, stats_weight >= 0; got "
                              f"{self.recon_beta}, {self.stats_beta}, {self.stats_weight}")


class DeeperBrainObjective(nn.Module):
    """``forward(model, batch) -> (loss, metrics)`` for batches of :class:`~.dataset.EEGWindows`.

    Args:
        config: a :class:`DeeperBrainObjectiveConfig`.
    """

    config_class = DeeperBrainObjectiveConfig

    def __init__(self, config: DeeperBrainObjectiveConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            model: a :class:`~.model.DeeperBrain`.
            batch: ``x`` [B, C, T], ``pos`` [B, C, 3], ``chan_mask`` [B, C] bool, ``stats`` [B, C, S].

        Returns:
            ``(loss, {"recon": ..., "stats": ..., "visible": fraction of tokens kept})``.
        """
        x, pos, chan_mask, stats = batch["x"], batch["pos"], batch["chan_mask"], batch["stats"]
        cfg = model.config
        B, C, T = x.shape
        P = T // cfg.patch_size
        if stats.shape[-1] != cfg.n_stats:
            raise DataError(f"batch stats have S = {stats.shape[-1]} per channel but model.n_stats = {cfg.n_stats}; "
                            "set model.n_stats to the number of statistics the cache holds")
        valid = chan_mask[:, :, None].expand(B, C, P).reshape(B, C * P)  # [B, C, P] -> [B, N]
        keep, _ = sample_keep(valid, self.config.mask_ratio)
        recon, pred_stats = model(x, pos, chan_mask, keep)
        visible = torch.zeros_like(valid)
        for b, k in enumerate(keep):
            visible[b, k] = True
        masked = valid & ~visible
        target = model.scale_input(x, chan_mask).reshape(B, C * P, cfg.patch_size)  # [B, C, T] -> [B, N, patch]
        if not masked.any():  # mask_ratio 0: reconstruct everything
            masked = valid
        rec = F.smooth_l1_loss(recon[masked].float(), target[masked].float(), beta=self.config.recon_beta)
        st = F.smooth_l1_loss(pred_stats[chan_mask].float(), stats[chan_mask].float(), beta=self.config.stats_beta)
        loss = rec + self.config.stats_weight * st
        return loss, {"recon": rec.detach(), "stats": st.detach(),
                      "visible": visible.sum().float() / valid.sum().clamp(min=1)}
