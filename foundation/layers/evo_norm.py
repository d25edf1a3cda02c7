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

Both normalisation-activations have a hand-written backward that saves ``x`` and the small statistics only (plain
autograd keeps five or more tensors of ``x``'s size). For S0, with ``a = x sigmoid(v x)``, ``g' = dL/dy * gamma / std``
and n values per group:

    dL/dx = g' (sig + v x sig (1 - sig)) - sum_group(g' a) / std * (x - mean_group) / (n std)
    dL/dv = sum(g' x^2 sig (1 - sig)),   dL/dgamma = sum(dL/dy a / std)

For B0, ``d = max(left, right)`` with ``left = sqrt(batch_var + eps)`` and ``right = v x + sqrt(instance_var + eps)``;
``dL/dd = -dL/dy gamma x / d^2`` goes to whichever side is larger (half to each on a tie, as ``torch.maximum``),
and through each square root to ``x`` as ``dL/dsqrt * (x - mean) / (n sqrt)`` over that statistic's n values.
"""
from __future__ import annotations

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers._shape import along, feature_axis, require_num_features, stat_dtype
from foundation.layers.compiled_core import CompiledCore

__all__ = ["EvoNormB0", "EvoNormS0"]


def _to_bcl(x: torch.Tensor, axis: int) -> torch.Tensor:
    """[B, .., C, ..] -> [B, C, L] with the feature axis second and the other non-batch axes flattened."""
    xc = x.movedim(axis, 1)  # [B, .., C, ..] -> [B, C, ...]
    return xc.reshape(xc.shape[0], xc.shape[1], -1)  # [B, C, ...] -> [B, C, L]


def _from_bcl(y: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`_to_bcl`: [B, C, L] -> the layout of ``x``."""
    shape = list(x.movedim(axis, 1).shape)
    return y.reshape(shape).movedim(1, axis)  # [B, C, L] -> [B, C, ...] -> [B, .., C, ..]


class _EvoS0Fn(torch.autograd.Function):
    """S0 on [B, C, L] with G groups: ``x sigmoid(v x) / std_group * weight + bias``; v, weight, bias [1, C, 1].

    The forward runs in place on its one new tensor (timm's order of operations, so bit-identical to it). Every sum
    of the backward is taken per (sample, channel) over L in one pass (``grad a``, ``grad``, ``grad x^2 sig (1 -
    sig)``); the per-channel parameter gradients and the per-group ``dL/dstd`` are then sums of those [B, C, 1]
    tensors, so Inductor reads ``grad`` and ``x`` twice in all (these sums, then ``dL/dx``) instead of writing
    full-size intermediates between reductions of different shapes.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x3: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
        B, C, L = x3.shape
        xg = x3.reshape(B, groups, C // groups, L)  # [B, C, L] -> [B, G, C/G, L]
        var, mean = torch.var_mean(xg.to(stat_dtype(x3)), dim=(2, 3), correction=0, keepdim=True)
        std = var.add(eps).sqrt()  # [B, G, 1, 1]
        ctx.save_for_backward(x3, v, weight, mean, std)
        ctx.groups = groups
        std_x = std.to(x3.dtype).expand(xg.shape).reshape(B, C, L)  # [B, G, 1, 1] -> [B, C, L]
        return torch.mul(x3, v).sigmoid_().mul_(x3).div_(std_x).mul_(weight).add_(bias)  # timm's order

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x3, v, weight, mean, std = ctx.saved_tensors
        B, C, L = x3.shape
        G = ctx.groups
        sd = std.dtype
        sig = torch.sigmoid(x3 * v)
        dsig = sig * (1 - sig)
        a = x3 * sig
        # per (sample, channel) sums over L, one pass: [B, C, 1] each
        ga_sum = (grad * a).to(sd).sum(dim=2, keepdim=True)
        g_sum = grad.to(sd).sum(dim=2, keepdim=True)
        gx2_sum = (grad * x3 * x3 * dsig).to(sd).sum(dim=2, keepdim=True)
        std_c = std.expand(B, G, C // G, 1).reshape(B, C, 1)  # [B, G, 1, 1] -> [B, C, 1]
        w = weight.to(sd)
        grad_w = (ga_sum / std_c).sum(dim=0, keepdim=True).to(weight.dtype) if ctx.needs_input_grad[2] else None
        grad_b = g_sum.sum(dim=0, keepdim=True).to(weight.dtype) if ctx.needs_input_grad[3] else None
        grad_v = (gx2_sum * w / std_c).sum(dim=0, keepdim=True).to(v.dtype) if ctx.needs_input_grad[1] else None
        n = (C // G) * L
        grad_std = -(ga_sum * w).reshape(B, G, C // G, 1).sum(dim=2, keepdim=True) / (std * std)  # [B, G, 1, 1]
        slope = grad_std / (n * std)  # the group std's term: slope (x - mean), per (sample, group)
        slope_c = slope.expand(B, G, C // G, 1).reshape(B, C, 1).to(x3.dtype)
        offset_c = (-slope * mean).expand(B, G, C // G, 1).reshape(B, C, 1).to(x3.dtype)
        ga = grad * weight / std_c.to(x3.dtype)  # dL/da
        grad_x = ga * (sig + v * x3 * dsig) + x3 * slope_c + offset_c
        return grad_x, grad_v, grad_w, grad_b, None, None


class _EvoB0Fn(torch.autograd.Function):
    """B0 on [B, C, L]: ``x / max(left, v x + sqrt(instance_var + eps)) * weight + bias``; v, weight, bias [1, C, 1].

    ``left`` is ``sqrt(batch_var + eps)`` [1, C, 1]; with ``batch_stats`` it is the batch's own (its gradient flows
    back to ``x``, ``batch_mean`` is the batch mean), otherwise it comes from the running variance. ``imean`` and
    ``ivar`` [B, C, 1] are the instance statistics.

    The backward takes every sum per (sample, channel) over L in one pass and derives the per-channel ones from
    those, so Inductor reads ``grad`` and ``x`` twice (these sums, then ``dL/dx``) and writes no full-size
    intermediate; the side of ``max`` is ``(sign(right - left) + 1) / 2`` (1, 0, or 1/2 at a tie, as
    ``torch.maximum``'s gradient), which Inductor vectorises where ``heaviside`` ran element by element.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x3: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, left: torch.Tensor, batch_mean: torch.Tensor, imean: torch.Tensor,
                ivar: torch.Tensor, batch_stats: bool, eps: float) -> torch.Tensor:
        inst = ivar.add(eps).sqrt()
        ctx.save_for_backward(x3, v, weight, left, batch_mean, imean, inst)
        ctx.batch_stats = batch_stats
        den = torch.mul(x3, v).add_(inst.to(x3.dtype))  # v x + instance std (not an addcmul: timm's rounding)
        return (x3 / torch.maximum(den, left.to(x3.dtype))).mul_(weight).add_(bias)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x3, v, weight, left, batch_mean, imean, inst = ctx.saved_tensors
        B, C, L = x3.shape
        sd, dt = left.dtype, x3.dtype
        lx = left.to(dt)
        right = torch.mul(x3, v).add_(inst.to(dt))  # as in forward (the same rounding decides max's side)
        to_right = (right - lx).sign_().add_(1).mul_(0.5)  # share of den's gradient going to right: 1, 0, 1/2 at a tie
        rden = torch.maximum(right, lx).reciprocal_()  # 1 / den
        q = x3 * rden  # x / den
        gq = grad * weight * rden  # dL/dy weight / den
        grad_den = -gq * q  # -dL/dy weight x / den^2
        grad_right = grad_den * to_right
        # per (sample, channel) sums over L, one pass: [B, C, 1] each
        gq_sum = (grad * q).to(sd).sum(dim=2, keepdim=True)
        g_sum = grad.to(sd).sum(dim=2, keepdim=True)
        right_sum = grad_right.to(sd).sum(dim=2, keepdim=True)  # dL/dinst
        den_sum = grad_den.to(sd).sum(dim=2, keepdim=True)
        rx_sum = (grad_right * x3).to(sd).sum(dim=2, keepdim=True)
        grad_w = gq_sum.sum(dim=0, keepdim=True).to(weight.dtype) if ctx.needs_input_grad[2] else None
        grad_b = g_sum.sum(dim=0, keepdim=True).to(weight.dtype) if ctx.needs_input_grad[3] else None
        grad_v = rx_sum.sum(dim=0, keepdim=True).to(v.dtype) if ctx.needs_input_grad[1] else None
        slope = right_sum / (L * inst)  # the instance std's term: slope (x - imean), per (sample, channel)
        offset = -slope * imean
        if ctx.batch_stats:
            grad_left = (den_sum - right_sum).sum(dim=0, keepdim=True)  # [1, C, 1]
            slope_b = grad_left / (B * L * left)
            slope, offset = slope + slope_b, offset - slope_b * batch_mean
        grad_x = gq + grad_right * v + x3 * slope.to(dt) + offset.to(dt)
        return grad_x, grad_v, grad_w, grad_b, None, None, None, None, None, None


def _evo_b0(x: torch.Tensor, axis: int, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            running_var: torch.Tensor, training: bool, momentum: float, eps: float) -> torch.Tensor:
    """EvoNorm-B0 on ``x`` with feature axis ``axis``; in training the running variance is updated in place."""
    x3 = _to_bcl(x, axis)  # [B, C, L]
    stat = stat_dtype(x)
    with torch.no_grad():  # the statistics' gradient is part of _EvoB0Fn's backward
        ivar, imean = torch.var_mean(x3.to(stat), dim=2, correction=0, keepdim=True)  # [B, C, 1]
        if training:  # taken directly, not combined from the instance ones: bit-identical to timm's
            var, mean = torch.var_mean(x3.to(stat), dim=(0, 2), correction=0, keepdim=True)  # [1, C, 1]
            n = x3.numel() // x3.shape[1]
            running_var.copy_(running_var * (1 - momentum) + var.reshape(-1) * momentum * (n / (n - 1)))
    if not training:
        var = along(running_var.to(stat), x3, 1)
        mean = torch.zeros_like(var)
    left = var.add(eps).sqrt()
    y = _EvoB0Fn.apply(x3, *(along(p.to(x.dtype), x3, 1) for p in (v, weight, bias)), left, mean, imean, ivar,
                       training, eps)
    return _from_bcl(y, x, axis)


def _evo_s0(x: torch.Tensor, axis: int, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
            eps: float) -> torch.Tensor:
    """EvoNorm-S0 on ``x`` with feature axis ``axis`` and ``groups`` channel groups."""
    x3 = _to_bcl(x, axis)  # [B, C, L]
    y = _EvoS0Fn.apply(x3, *(along(p.to(x.dtype), x3, 1) for p in (v, weight, bias)), groups, eps)
    return _from_bcl(y, x, axis)


# static shapes (a new shape compiles again): with dynamic sizes Inductor's grouped reductions ran 1.5x (B0) and 13x
# (S0) slower than static ones at [16, 128, 512] (one thread, torch 2.14.1)
_B0_CORE = CompiledCore(_evo_b0, dynamic=False)
_S0_CORE = CompiledCore(_evo_s0, dynamic=False)


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
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.
        dim: the feature axis: -1 for tokens [B, N, C], 1 for feature maps [B, C, L] / [B, C, H, W] /
            [B, C, D, H, W].
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Raises:
        ConfigError: ``num_features`` missing or not a positive int.
    """

    def __init__(self, num_features: int | None = None, apply_act: bool = True, momentum: float = 0.1,
                 eps: float = 1e-3, dim: int = -1, fused: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fused = fused
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
        if self.v is not None:
            if self.training and x.numel() // x.shape[axis] < 2:
                raise DataError(f"EvoNormB0: training needs more than one value per channel for the batch "
                                f"variance, received input {tuple(x.shape)}; use a larger batch or eval mode")
            return (_B0_CORE if self.fused else _B0_CORE.fn)(x, axis, self.v, self.weight, self.bias, self.running_var,
                                                             self.training, self.momentum, self.eps)
        x3 = _to_bcl(x, axis)  # [B, C, L]
        y = x3 * along(self.weight.to(x.dtype), x3, 1) + along(self.bias.to(x.dtype), x3, 1)
        return _from_bcl(y, x, axis)

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, apply_act={self.apply_act}, eps={self.eps}, dim={self.dim}, "
                f"fused={self.fused}")


class EvoNormS0(nn.Module):
    """EvoNorm-S0: sample-based (batch-independent) normalisation-activation with group statistics.

    Args:
        num_features: size C of the feature axis (required).
        groups: number of channel groups (32 when neither ``groups`` nor ``group_size`` is given); must divide C.
        group_size: channels per group instead of ``groups``; must divide C. Give one of the two, not both.
        apply_act: apply the normalisation-activation; False leaves only the affine ``x * gamma + beta``.
        eps: added to the group variance (1e-5, timm's default).
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.
        dim: the feature axis: -1 for tokens [B, N, C], 1 for feature maps [B, C, ...].
        device: device of the parameters.
        dtype: dtype of the parameters.

    Raises:
        ConfigError: ``num_features`` missing, both ``groups`` and ``group_size`` given, or the group count does
            not divide ``num_features``.
    """

    def __init__(self, num_features: int | None = None, groups: int | None = None, group_size: int | None = None,
                 apply_act: bool = True, eps: float = 1e-5, dim: int = -1, fused: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fused = fused
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
        if self.v is not None:
            return (_S0_CORE if self.fused else _S0_CORE.fn)(x, axis, self.v, self.weight, self.bias, self.groups,
                                                             self.eps)
        x3 = _to_bcl(x, axis)  # [B, C, L]
        y = x3 * along(self.weight.to(x.dtype), x3, 1) + along(self.bias.to(x.dtype), x3, 1)
        return _from_bcl(y, x, axis)

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, groups={self.groups}, apply_act={self.apply_act}, dim={self.dim}, "
                f"fused={self.fused}")
