"""ASH: Adaptive SwisH, the stochastic adaptive activation (soft and hard forms).

Paper: "Stochastic Adaptive Activation Function" (Lee, Yang, Lee, Hwang, NeurIPS 2022),
https://arxiv.org/abs/2210.11672. ASH passes the top-k percent of a sample's activations and zeroes the rest; the
k-th percentile is estimated under a Gaussian assumption as ``mean + z_k * std`` with ``z_k = Phi^-1(1 - k)``
(k = 0.1 gives z_k = 1.2816):

    hard:  ASH(x) = x * 1[x >= mean(x) + z_k * std(x)]
    soft:  ASH(x) = x * sigmoid(alpha * (x - mean(x) - z_k * std(x)))

Statistics are taken over the feature axis (or axes) ``dim`` of each sample, in float32 (population std), then cast
back to the input dtype. ``z_k`` is learnable in the soft form. The soft form's backward is written out by hand and
saves only ``x`` and the per-sample mean and std (plain autograd keeps five tensors of ``x``'s size); with
``t = mean + z_k std``, ``s = sigmoid(alpha (x - t))``, ``q = dL/dy * x * s (1 - s)`` and n entries per sample:

    dL/dx = dL/dy * s + alpha q + dL/dt (1/n + z_k (x - mean) / (n std)),   dL/dt = -alpha sum(q)
    dL/dz_k = dL/dt std,   dL/dalpha = sum(q (x - t))
 Whether the paper learns ``alpha`` is unverified:
``learn_alpha`` switches it on (unverified), and the default ``alpha = 1.0`` is ours (unverified).
"""
from __future__ import annotations

import torch
from scipy.stats import norm
from torch import nn

from foundation.errors import ConfigError
from foundation.layers._shape import feature_axis, stat_dtype
from foundation.layers.compiled_core import CompiledCore

__all__ = ["ASH", "HardASH", "z_from_k"]


def z_from_k(k: float) -> float:
    """Return ``Phi^-1(1 - k)``, the standard-normal quantile above which a share ``k`` of the mass lies.

    Raises:
        ConfigError: ``k`` outside (0, 1).
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 < k < 1.0:
        raise ConfigError(f"ASH: k is the share of activations kept and must lie in (0, 1), received {k!r}; "
                          f"e.g. k=0.1 keeps the top 10%")
    return float(norm.ppf(1.0 - k))


def _axes(x: torch.Tensor, dim: int | tuple[int, ...], layer: str) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(feature_axis(x, d, None, layer) for d in dims)


def _threshold(x: torch.Tensor, axes: tuple[int, ...], z: torch.Tensor) -> torch.Tensor:
    """``mean + z * std`` over ``axes`` of each sample, computed in float32 and cast back: [...] -> [...] (keepdim)."""
    xf = x.to(stat_dtype(x))
    var, mean = torch.var_mean(xf, dim=axes, correction=0, keepdim=True)
    return (mean + z.to(xf.dtype) * var.sqrt()).to(x.dtype)


class _SoftASHFn(torch.autograd.Function):
    """``x * sigmoid(alpha (x - mean - z std))`` over ``axes``; saves ``x``, the stats and the two scalars.

    Few elementwise passes: ``alpha (x - t)`` is one ``addcmul`` with ``-alpha t`` folded per sample, the sigmoid
    and the product with ``x`` run in place on that one new tensor; backward folds the statistics' term
    ``dL/dt (1/n + z (x - mean) / (n std))`` into one per-sample affine function of ``x`` (one ``addcmul``).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                axes: tuple[int, ...]) -> torch.Tensor:
        xf = x.to(stat_dtype(x))
        var, mean = torch.var_mean(xf, dim=axes, correction=0, keepdim=True)
        std = var.sqrt()
        thr = (mean + z.to(xf.dtype) * std).to(x.dtype)
        ctx.save_for_backward(x, mean, std, z, alpha)
        ctx.axes = axes
        return torch.addcmul(-alpha * thr, x, alpha).sigmoid_().mul_(x)  # x sigmoid(alpha x - alpha t)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, std, z, alpha = ctx.saved_tensors
        axes = ctx.axes
        thr = (mean + z.to(mean.dtype) * std).to(x.dtype)
        s = torch.addcmul(-alpha * thr, x, alpha).sigmoid_()
        q = torch.addcmul(s, s, s, value=-1).mul_(grad).mul_(x)  # dL/dy x s (1 - s)
        q_sum = q.sum(dim=axes, keepdim=True)
        gt = (-alpha * q_sum).to(mean.dtype)  # dL/dt [..] per sample
        n = x.numel() // gt.numel()
        slope = gt * z.to(mean.dtype) / (n * std)  # the statistics' term: gt / n + slope (x - mean)
        grad_alpha = ((q * x).sum() - (q_sum * thr).sum()).reshape(alpha.shape) if ctx.needs_input_grad[2] else None
        grad_x = s.mul_(grad).add_(q.mul_(alpha)).addcmul_(x, slope.to(x.dtype)).add_((gt / n - slope * mean).to(x.dtype))
        grad_z = (gt * std).sum().reshape(z.shape).to(z.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_z, grad_alpha, None


class _HardASHFn(torch.autograd.Function):
    """``x * 1[x >= thr]`` with ``thr`` [..] per sample (no gradient through it), saving ``x`` and ``thr``.

    Backward recomputes the step ``1[x >= thr]`` as ``clamp(sign(x - thr) + 1, max=1)`` (exact: a float difference
    is 0 only when ``x == thr``), in float ops only. Written as a comparison, Inductor's partitioner saved the
    boolean ``x >= thr`` from the forward, and its CPU code stores booleans element by element: the compiled forward
    took 6.8 ms on [16, 128, 512] against GELU's 0.5 ms (one thread); with the float step it takes 0.3 ms.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, thr)
        return torch.where(x >= thr, x, 0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, thr = ctx.saved_tensors
        return grad * (x - thr).sign_().add_(1).clamp_(max=1), None  # dL/dy 1[x >= thr]


def _soft_ash(x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return _SoftASHFn.apply(x, z, alpha, axes)


def _hard_ash(x: torch.Tensor, z: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return _HardASHFn.apply(x, _threshold(x, axes, z).detach())


_SOFT_CORE = CompiledCore(_soft_ash)
_HARD_CORE = CompiledCore(_hard_ash)


class ASH(nn.Module):
    """Soft ASH: ``x * sigmoid(alpha * (x - mean(x) - z_k * std(x)))``, stats over ``dim`` per sample.

    Args:
        k: share of activations the layer aims to keep, in (0, 1); sets ``z_k = Phi^-1(1 - k)`` at init.
        alpha: sigmoid sharpness (1.0, unverified); larger approaches the hard form.
        learn_alpha: make ``alpha`` a learnable parameter (unverified whether the paper does).
        dim: feature axis or axes the statistics run over: -1 for tokens [B, N, C], (1, 2, 3) for a whole
            feature map [B, C, H, W].
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Raises:
        ConfigError: ``k`` outside (0, 1).
    """

    def __init__(self, k: float = 0.1, alpha: float = 1.0, learn_alpha: bool = False,
                 dim: int | tuple[int, ...] = -1, fused: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fused = fused
        self.k = k
        self.z_init = z_from_k(k)
        self.alpha_init = float(alpha)
        self.dim = dim
        self.z_k = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        alpha_t = torch.empty((), device=device, dtype=dtype)
        if learn_alpha:
            self.alpha = nn.Parameter(alpha_t)
        else:
            self.register_buffer("alpha", alpha_t)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set ``z_k = Phi^-1(1 - k)`` and ``alpha`` to its initial value."""
        with torch.no_grad():
            self.z_k.fill_(self.z_init)
            self.alpha.fill_(self.alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply soft ASH.

        Args:
            x: input [..., C] (statistics over ``dim``).

        Returns:
            Output of the same shape.
        """
        core = _SOFT_CORE if self.fused else _SOFT_CORE.fn
        return core(x, self.z_k, self.alpha.to(x.dtype), _axes(x, self.dim, "ASH"))

    def extra_repr(self) -> str:
        return f"k={self.k}, alpha={self.alpha_init}, dim={self.dim}, fused={self.fused}"


class HardASH(nn.Module):
    """Hard ASH: ``x * 1[x >= mean(x) + z_k * std(x)]``, stats over ``dim`` per sample.

    Keeps about the top ``k`` share of each sample's activations (exactly so for Gaussian activations). The
    threshold depends on ``x``; the gradient is ``1[kept]`` (the indicator's derivative is zero almost everywhere).
    For exactly k kept entries per token use :class:`~foundation.layers.topk.TopKReLU`.

    Args:
        k: share of activations kept, in (0, 1).
        dim: feature axis or axes the statistics run over (see :class:`ASH`).
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.

    Raises:
        ConfigError: ``k`` outside (0, 1).
    """

    def __init__(self, k: float = 0.1, dim: int | tuple[int, ...] = -1, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        self.k = k
        self.dim = dim
        self.register_buffer("z_k", torch.tensor(z_from_k(k)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply hard ASH.

        Args:
            x: input [..., C].

        Returns:
            Output of the same shape; entries below the threshold are 0.
        """
        return (_HARD_CORE if self.fused else _HARD_CORE.fn)(x, self.z_k, _axes(x, self.dim, "HardASH"))

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, fused={self.fused}"
