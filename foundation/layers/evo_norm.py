"""EvoNorm-B0 and EvoNorm-S0: evolved normalisation-activation layers, for tokens and 1D/2D/3D feature maps.

Paper: "Evolving Normalization-Activation Layers" (Liu, Brock, Simonyan, Le, NeurIPS 2020),
https://arxiv.org/abs/2004.02967. Numerics follow timm's ``EvoNorm2dB0`` / ``EvoNorm2dS0`` (timm/layers/evo_norm.py)
exactly on [B, C, H, W] input, and generalise them to any layout by moving the feature axis ``dim`` to position 1
and flattening every other non-batch axis into one "instance" axis L:

    B0:  y = x / max(sqrt(batch_var + eps), v * x + sqrt(instance_var + eps)) * gamma + beta
    S0:  y = x * sigmoid(v * x) / sqrt(group_var + eps) * gamma + beta

- batch_var: per-channel variance over batch and instance axes (population); a running estimate is kept like
  ``nn.BatchNorm`` (momentum 0.1, updated with the unbiased batch variance) and used in eval mode.
- instance_var: per sample and channel, over the instance axes L (tokens N, or the spatial axes).
- group_var: per sample and group of C / groups channels, over those channels and L; groups = 32 by default.
- gamma = 1, beta = 0, v = 1 at init. eps = 1e-3 for B0 and 1e-5 for S0 (timm's defaults).
Statistics are computed in float32 (float64 for float64 input) and cast back to the input dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers._shape import along, feature_axis, require_num_features, stat_dtype

__all__ = ["EvoNormB0", "EvoNormS0"]


def _to_bcl(x: torch.Tensor, axis: int) -> torch.Tensor:
    """[B, .., C, ..] -> [B, C, L] with the feature axis second and the other non-batch axes flattened."""
    xc = x.movedim(axis, 1)  # [B, .., C, ..] -> [B, C, ...]
    return xc.reshape(xc.shape[0], xc.shape[1], -1)  # [B, C, ...] -> [B, C, L]


def _from_bcl(y: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`_to_bcl`: [B, C, L] -> the layout of ``x``."""
    shape = list(x.movedim(axis, 1).shape)
    return y.reshape(shape).movedim(1, axis)  # [B, C, L] -> [B, C, ...] -> [B, .., C, ..]


def _check_input(x: torch.Tensor, dim: int, num_features: int, layer: str) -> int:
    if x.ndim < 2:
        raise DataError(f"{layer}: expected [B, ..., C] or [B, C, ...] input, received shape {tuple(x.shape)}")
    axis = feature_axis(x, dim, num_features, layer)
    if axis == 0:
        raise DataError(f"{layer}: the feature axis dim={dim} is the batch axis of input {tuple(x.shape)}; "
                        f"pass dim=-1 for tokens or dim=1 for feature maps")
    return axis


class EvoNormB0(nn.Module):
    """EvoNorm-B0: batch-dependent normalisation-activation with a running variance.

    Args:
        num_features: size C of the feature axis (required).
        apply_act: apply the normalisation-activation; False leaves only the affine ``x * gamma + beta`` (as timm).
        momentum: running-variance momentum.
        eps: added to both variances (1e-3, timm's default).
        dim: the feature axis: -1 for tokens [B, N, C], 1 for feature maps [B, C, L] / [B, C, H, W] /
            [B, C, D, H, W].
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Raises:
        ConfigError: ``num_features`` missing or not a positive int.
    """

    def __init__(self, num_features: int | None = None, apply_act: bool = True, momentum: float = 0.1,
                 eps: float = 1e-3, dim: int = -1, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_features = require_num_features(num_features, "EvoNormB0")
        self.apply_act = apply_act
        self.momentum = momentum
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(self.num_features, **dd))
        self.bias = nn.Parameter(torch.empty(self.num_features, **dd))
        self.v = nn.Parameter(torch.empty(self.num_features, **dd)) if apply_act else None
        self.register_buffer("running_var", torch.empty(self.num_features, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gamma = 1, beta = 0, v = 1, running variance 1."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.v is not None:
            nn.init.ones_(self.v)
        nn.init.ones_(self.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply EvoNorm-B0.

        Args:
            x: tokens [B, N, C] (``dim=-1``) or feature maps [B, C, ...] (``dim=1``).

        Returns:
            Output of the same shape.

        Raises:
            DataError: wrong feature count, or a single value per channel in training (no batch variance).
        """
        axis = _check_input(x, self.dim, self.num_features, "EvoNormB0")
        x3 = _to_bcl(x, axis)  # [B, C, L]
        if self.v is not None:
            xf = x3.to(stat_dtype(x))
            if self.training:
                n = xf.numel() / xf.shape[1]
                if n < 2:
                    raise DataError(f"EvoNormB0: training needs more than one value per channel for the batch "
                                    f"variance, received input {tuple(x.shape)}; use a larger batch or eval mode")
                var = xf.var(dim=(0, 2), unbiased=False)
                with torch.no_grad():
                    update = self.running_var * (1 - self.momentum) + var.detach() * self.momentum * (n / (n - 1))
                    self.running_var.copy_(update)
            else:
                var = self.running_var
            left = along(var.add(self.eps).sqrt().to(x.dtype), x3, 1)
            inst = xf.var(dim=2, unbiased=False, keepdim=True).add(self.eps).sqrt().to(x.dtype)
            right = x3 * along(self.v.to(x.dtype), x3, 1) + inst
            x3 = x3 / torch.maximum(left, right)
        y = x3 * along(self.weight.to(x.dtype), x3, 1) + along(self.bias.to(x.dtype), x3, 1)
        return _from_bcl(y, x, axis)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, apply_act={self.apply_act}, eps={self.eps}, dim={self.dim}"


class EvoNormS0(nn.Module):
    """EvoNorm-S0: sample-based (batch-independent) normalisation-activation with group statistics.

    Args:
        num_features: size C of the feature axis (required).
        groups: number of channel groups (32 when neither ``groups`` nor ``group_size`` is given); must divide C.
        group_size: channels per group instead of ``groups``; must divide C. Give one of the two, not both.
        apply_act: apply the normalisation-activation; False leaves only the affine ``x * gamma + beta``.
        eps: added to the group variance (1e-5, timm's default).
        dim: the feature axis: -1 for tokens [B, N, C], 1 for feature maps [B, C, ...].
        device: device of the parameters.
        dtype: dtype of the parameters.

    Raises:
        ConfigError: ``num_features`` missing, both ``groups`` and ``group_size`` given, or the group count does
            not divide ``num_features``.
    """

    def __init__(self, num_features: int | None = None, groups: int | None = None, group_size: int | None = None,
                 apply_act: bool = True, eps: float = 1e-5, dim: int = -1, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C = require_num_features(num_features, "EvoNormS0")
        if groups is not None and group_size is not None:
            raise ConfigError(f"EvoNormS0: give groups or group_size, not both (received groups={groups}, "
                              f"group_size={group_size})")
        if group_size is not None:
            if group_size < 1 or C % group_size:
                raise ConfigError(f"EvoNormS0: group_size={group_size} must divide num_features={C}")
            groups = C // group_size
        groups = 32 if groups is None else groups
        if groups < 1 or C % groups:
            valid = [g for g in range(1, C + 1) if C % g == 0]
            raise ConfigError(f"EvoNormS0: groups={groups} must divide num_features={C}; valid group counts for "
                              f"{C} channels: {valid}")
        self.num_features = C
        self.groups = groups
        self.apply_act = apply_act
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(C, **dd))
        self.bias = nn.Parameter(torch.empty(C, **dd))
        self.v = nn.Parameter(torch.empty(C, **dd)) if apply_act else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gamma = 1, beta = 0, v = 1."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.v is not None:
            nn.init.ones_(self.v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply EvoNorm-S0.

        Args:
            x: tokens [B, N, C] (``dim=-1``) or feature maps [B, C, ...] (``dim=1``).

        Returns:
            Output of the same shape.

        Raises:
            DataError: wrong feature count.
        """
        axis = _check_input(x, self.dim, self.num_features, "EvoNormS0")
        x3 = _to_bcl(x, axis)  # [B, C, L]
        if self.v is not None:
            B, C, L = x3.shape
            xg = x3.reshape(B, self.groups, C // self.groups, L)  # [B, C, L] -> [B, G, C/G, L]
            std = xg.to(stat_dtype(x)).var(dim=(2, 3), unbiased=False, keepdim=True).add(self.eps).sqrt()
            std = std.to(x.dtype).expand(xg.shape).reshape(B, C, L)  # [B, G, 1, 1] -> [B, C, L]
            x3 = x3 * torch.sigmoid(x3 * along(self.v.to(x.dtype), x3, 1)) / std
        y = x3 * along(self.weight.to(x.dtype), x3, 1) + along(self.bias.to(x.dtype), x3, 1)
        return _from_bcl(y, x, axis)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, groups={self.groups}, apply_act={self.apply_act}, dim={self.dim}"
