"""Feature-axis helpers shared by the activation and norm layers.

Each layer that keeps per-feature state (a parameter of shape [C], statistics over a feature axis) takes a ``dim``
argument naming its feature axis: ``-1`` for tokens [B, N, C] or any [..., C], ``1`` for feature maps [B, C, ...].
"""
from __future__ import annotations

import torch

from foundation.errors import ConfigError, DataError


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype norm statistics are computed in: float32, or float64 when the input is float64."""
    return torch.promote_types(x.dtype, torch.float32)


def feature_axis(x: torch.Tensor, dim: int, num_features: int | None, layer: str) -> int:
    """Return the non-negative feature axis of ``x`` and check its size.

    Args:
        x: the input tensor.
        dim: the feature axis (negative counts from the end).
        num_features: the expected size of that axis, or None to skip the check.
        layer: the layer's name, for messages.

    Raises:
        DataError: ``dim`` is outside ``x``'s axes, or the axis size differs from ``num_features``.
    """
    if not -x.ndim <= dim < x.ndim:
        raise DataError(
            f"{layer}: feature axis dim={dim} does not exist for an input of shape {tuple(x.shape)}; "
            f"pass dim=-1 for tokens [B, N, C] or dim=1 for feature maps [B, C, ...]"
        )
    axis = dim % x.ndim
    if num_features is not None and x.shape[axis] != num_features:
        raise DataError(
            f"{layer}: expected {num_features} features on axis {dim}, received {x.shape[axis]} "
            f"(input shape {tuple(x.shape)}); build the layer with num_features={x.shape[axis]} or fix dim"
        )
    return axis


def along(param: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """View a per-feature tensor [C] so that it broadcasts against ``x`` along ``axis``: [C] -> [1, .., C, .., 1]."""
    shape = [1] * x.ndim
    shape[axis] = -1
    return param.view(shape)


def require_num_features(num_features: int | None, layer: str) -> int:
    """Check a ``num_features`` constructor argument.

    Raises:
        ConfigError: it is None or not a positive integer.
    """
    if num_features is None:
        raise ConfigError(
            f"{layer}: num_features is missing; this layer keeps one value per feature, so pass the width of its "
            f"feature axis, e.g. make_activation('{layer.lower()}', num_features=256)"
        )
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ConfigError(f"{layer}: num_features must be a positive int, received {num_features!r}")
    return num_features
