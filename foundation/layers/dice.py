"""Dice: the data-adaptive activation of the Deep Interest Network.

Paper: "Deep Interest Network for Click-Through Rate Prediction" (Zhou et al., KDD 2018),
https://arxiv.org/abs/1706.06978.

    p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))
    Dice(s) = s * (p(s) + alpha * (1 - p(s))) = p(s) * s + (1 - p(s)) * alpha * s

The normalisation is batch-norm style without affine: in training E and Var are the mini-batch statistics of each
feature (over every axis except the feature axis, population variance) and running averages are kept like
``nn.BatchNorm`` (momentum 0.1, unbiased running variance); in eval mode the running averages are used. ``alpha``
is one learnable value per feature, initialised to 0 (so Dice starts as a smooth, data-centred gate of ``s``).
``eps = 1e-8`` follows the paper's text (unverified).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import DataError
from foundation.layers._shape import along, feature_axis, require_num_features, stat_dtype

__all__ = ["Dice"]


class Dice(nn.Module):
    """Dice activation with per-feature ``alpha`` and batch statistics along the feature axis ``dim``.

    Args:
        num_features: size C of the feature axis (required; ``make_activation`` passes it).
        dim: the feature axis: -1 for tokens [B, N, C] or [B, C], 1 for feature maps [B, C, ...].
        eps: added to the variance (1e-8, unverified).
        momentum: running-statistics momentum, as in ``nn.BatchNorm``.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Raises:
        ConfigError: ``num_features`` missing or not a positive int.
    """

    def __init__(self, num_features: int | None = None, dim: int = -1, eps: float = 1e-8, momentum: float = 0.1,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_features = require_num_features(num_features, "Dice")
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.alpha = nn.Parameter(torch.empty(self.num_features, device=device, dtype=dtype))
        self.register_buffer("running_mean", torch.empty(self.num_features, device=device, dtype=torch.float32))
        self.register_buffer("running_var", torch.empty(self.num_features, device=device, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``alpha`` = 0, running mean 0, running variance 1."""
        nn.init.zeros_(self.alpha)
        nn.init.zeros_(self.running_mean)
        nn.init.ones_(self.running_var)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Apply Dice.

        Args:
            s: input [..., C] (or [B, C, ...] with ``dim=1``).

        Returns:
            Output of the same shape.

        Raises:
            DataError: fewer than 2 axes, or the feature axis does not have ``num_features`` entries.
        """
        if s.ndim < 2:
            raise DataError(f"Dice: needs a batch axis besides the feature axis, received shape {tuple(s.shape)}")
        axis = feature_axis(s, self.dim, self.num_features, "Dice")
        sf = s.to(stat_dtype(s)).movedim(axis, 1)  # [B, .., C, ..] -> [B, C, ...]
        running_mean, running_var = self.running_mean, self.running_var
        if sf.dtype != running_mean.dtype:  # float64 input: keep the statistics in float64 as well
            running_mean, running_var = running_mean.to(sf.dtype), running_var.to(sf.dtype)
        z = F.batch_norm(sf, running_mean, running_var, None, None, self.training, self.momentum, self.eps)
        if running_mean is not self.running_mean and self.training:
            self.running_mean.copy_(running_mean)
            self.running_var.copy_(running_var)
        p = torch.sigmoid(z).movedim(1, axis).to(s.dtype)  # [B, C, ...] -> [B, .., C, ..]
        alpha = along(self.alpha.to(s.dtype), s, axis)
        return s * (p + alpha * (1 - p))

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, dim={self.dim}, eps={self.eps}"
