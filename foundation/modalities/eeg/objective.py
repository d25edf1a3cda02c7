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
from typing import Any

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


def _masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B, N, F] over the rows where ``rows`` [B, N] is True, without a data-dependent shape
    (``values[rows].mean()`` as one graph); entries outside the rows do not count, even non-finite ones.

    Each row is summed first ([B, N, F] -> [B, N]) and the rows are selected after (a non-finite row sum outside
    the rows is dropped with its row), so no [B, N, F] mask is expanded, selected against or counted (issue 16:
    counting the expanded bool mask alone wrote an int64 [B, N, F] buffer each step).
    """
    total = torch.where(rows, values.sum(-1), 0.0).sum()  # [B, N, F] -> [B, N] -> scalar
    return total / (rows.sum() * values.shape[-1]).clamp(min=1)


class DeeperBrainObjective(nn.Module):
    """``forward(model, batch) -> (loss, metrics)`` for batches of :class:`~.dataset.EEGWindows`.

    Args:
        config: a :class:`DeeperBrainObjectiveConfig`.
    """

    config_class = DeeperBrainObjectiveConfig

    def __init__(self, config: DeeperBrainObjectiveConfig) -> None:
        super().__init__()
        self.config = config

    def prepare(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Draw the masks (data-dependent sizes; runs before the compiled region of a training step).

        Returns:
            The batch with ``keep`` (B 1-D tensors of visible token indices), ``visible`` [B, N] bool and
            ``plans`` (the model's packing of them, :meth:`~.model.DeeperBrain.mask_plans`) added.
        """
        chan_mask = batch["chan_mask"]
        B, C = chan_mask.shape
        P = batch["x"].shape[-1] // model.config.patch_size
        valid = chan_mask[:, :, None].expand(B, C, P).reshape(B, C * P)  # [B, C, P] -> [B, N]
        keep, _ = sample_keep(valid, self.config.mask_ratio)
        rows = torch.repeat_interleave(torch.arange(B), torch.tensor([k.numel() for k in keep]))  # [sum K_b]
        visible = torch.zeros_like(valid)
        visible[rows.to(valid.device), torch.cat(keep).to(valid.device)] = True
        plans = model.mask_plans(chan_mask, visible, P, batch["x"].device)  # keep is sorted: the same plan
        return {**batch, "keep": keep, "visible": visible, "plans": plans}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            model: a :class:`~.model.DeeperBrain`.
            batch: ``x`` [B, C, T], ``pos`` [B, C, 3], ``chan_mask`` [B, C] bool, ``stats`` [B, C, S]; and
                ``keep`` / ``visible`` from :meth:`prepare` (drawn here when absent).

        Returns:
            ``(loss, {"recon": ..., "stats": ..., "visible": fraction of tokens kept})``.
        """
        if "keep" not in batch:
            batch = self.prepare(model, batch)
        x, pos, chan_mask, stats = batch["x"], batch["pos"], batch["chan_mask"], batch["stats"]
        cfg = model.config
        B, C, T = x.shape
        P = T // cfg.patch_size
        if stats.shape[-1] != cfg.n_stats:
            raise DataError(f"batch stats have S = {stats.shape[-1]} per channel but model.n_stats = {cfg.n_stats}; "
                            "set model.n_stats to the number of statistics the cache holds")
        valid = chan_mask[:, :, None].expand(B, C, P).reshape(B, C * P)  # [B, C, P] -> [B, N]
        visible = batch["visible"]
        xs = model.scale_input(x, chan_mask)  # [B, C, T], once: the model's input and the target
        recon, pred_stats = model(xs, pos, chan_mask, batch["keep"], batch.get("plans"), scaled=True)
        target = xs.reshape(B, C * P, cfg.patch_size)  # [B, C, T] -> [B, N, patch]
        # mask_ratio 0 leaves nothing masked: then every valid patch is reconstructed (no host read to decide)
        masked = valid & ~visible
        masked = torch.where(masked.any(), masked, valid)
        per = F.smooth_l1_loss(recon.float(), target.float(), beta=self.config.recon_beta, reduction="none")
        rec = _masked_mean(per, masked)  # the mean over the masked patches' samples
        per_st = F.smooth_l1_loss(pred_stats.float(), stats.float(), beta=self.config.stats_beta, reduction="none")
        st = _masked_mean(per_st, chan_mask)  # over the real channels' statistics
        loss = rec + self.config.stats_weight * st
        return loss, {"recon": rec.detach(), "stats": st.detach(),
                      "visible": visible.sum().float() / valid.sum().clamp(min=1)}
