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

The backward is written out by hand and saves ``s`` and the per-feature mean and 1/std (plain autograd keeps four
tensors of ``s``'s size). With ``z`` the normalised input, ``r = dL/dy * s * (1 - alpha) * p (1 - p)`` and means
over the statistics axes (training; in eval mode the statistics are constants and only ``r / std`` remains):

    dL/ds = dL/dy * (alpha + (1 - alpha) p) + (r - mean(r) - z mean(r z)) / std,   dL/dalpha = sum(dL/dy s (1 - p))
"""
from __future__ import annotations

import torch
from torch import nn

from foundation.errors import DataError
from foundation.layers._shape import along, feature_axis, require_num_features, stat_dtype
from foundation.layers.compiled_core import CompiledCore

__all__ = ["Dice"]


class _DiceFn(torch.autograd.Function):
    """``s * (p + alpha (1 - p))``, ``p = sigmoid((s - mean) * rstd)``; ``mean`` and ``rstd`` broadcast per feature.

    ``batch_stats`` says whether they are the batch's own (their gradient flows back to ``s``) or running values.
    Few elementwise passes: the normalisation is one ``addcmul`` (``s rstd - mean rstd``), ``p + alpha (1 - p)``
    another (``alpha + (1 - alpha) p``), the sigmoid and the products run in place on the new tensors.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, s: torch.Tensor, alpha: torch.Tensor, mean: torch.Tensor,
                rstd: torch.Tensor, batch_stats: bool) -> torch.Tensor:
        p = torch.addcmul(-mean * rstd, s.to(mean.dtype), rstd).sigmoid_().to(s.dtype)
        ctx.save_for_backward(s, alpha, mean, rstd)
        ctx.batch_stats = batch_stats
        return torch.addcmul(alpha, p, 1 - alpha).mul_(s)  # s (alpha + (1 - alpha) p)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        s, alpha, mean, rstd = ctx.saved_tensors
        z = torch.addcmul(-mean * rstd, s.to(mean.dtype), rstd)  # (s - mean) rstd
        p = torch.sigmoid(z).to(s.dtype)
        axes = tuple(i for i in range(s.ndim) if mean.shape[i] == 1)
        gs = grad * s
        grad_alpha = (gs - gs * p).sum(dim=axes, keepdim=True) if ctx.needs_input_grad[1] else None  # sum gs (1 - p)
        r = torch.addcmul(p, p, p, value=-1).mul_(gs).mul_(1 - alpha).to(mean.dtype)  # dL/dy s (1 - alpha) p (1 - p)
        if ctx.batch_stats:
            r_mean, rz_mean = r.mean(dim=axes, keepdim=True), (r * z).mean(dim=axes, keepdim=True)
            r.sub_(r_mean).addcmul_(z, rz_mean, value=-1)
        grad_s = torch.addcmul(alpha, p, 1 - alpha).mul_(grad).addcmul_(r.to(s.dtype), rstd.to(s.dtype))
        return grad_s, grad_alpha, None, None, None


def _dice(s: torch.Tensor, alpha: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, axis: int,
          training: bool, eps: float, momentum: float) -> torch.Tensor:
    """Dice over feature axis ``axis``: batch statistics (updating the running ones in place) or the running ones."""
    stat = stat_dtype(s)
    if training:
        axes = tuple(i for i in range(s.ndim) if i != axis)
        with torch.no_grad():  # the batch statistics' gradient is part of _DiceFn's backward
            var, mean = torch.var_mean(s.to(stat), dim=axes, correction=0, keepdim=True)  # [1, .., C, .., 1]
            n = s.numel() // s.shape[axis]
            running_mean.copy_(running_mean * (1 - momentum) + mean.reshape(-1) * momentum)
            running_var.copy_(running_var * (1 - momentum) + var.reshape(-1) * (momentum * n / (n - 1)))
    else:
        mean, var = along(running_mean.to(stat), s, axis), along(running_var.to(stat), s, axis)
    rstd = (var + eps).rsqrt()
    return _DiceFn.apply(s, along(alpha.to(s.dtype), s, axis), mean, rstd, training)


_CORE = CompiledCore(_dice)


class Dice(nn.Module):
    """Dice activation with per-feature ``alpha`` and batch statistics along the feature axis ``dim``.

    Args:
        num_features: size C of the feature axis (required; ``make_activation`` passes it).
        dim: the feature axis: -1 for tokens [B, N, C] or [B, C], 1 for feature maps [B, C, ...].
        eps: added to the variance (1e-8, unverified).
        momentum: running-statistics momentum, as in ``nn.BatchNorm``.
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Raises:
        ConfigError: ``num_features`` missing or not a positive int.
    """

    def __init__(self, num_features: int | None = None, dim: int = -1, eps: float = 1e-8, momentum: float = 0.1,
                 fused: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fused = fused
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
        if self.training and s.numel() == self.num_features:
            raise DataError(f"Dice: training needs more than one value per feature for the batch statistics, "
                            f"received shape {tuple(s.shape)}; use a larger batch or eval mode")
        return (_CORE if self.fused else _CORE.fn)(s, self.alpha, self.running_mean, self.running_var, axis,
                                                   self.training, self.eps, self.momentum)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, dim={self.dim}, eps={self.eps}, fused={self.fused}"
