"""ASH: Adaptive SwisH, the stochastic adaptive activation (soft and hard forms).

Paper: "Stochastic Adaptive Activation Function" (Lee, Yang, Lee, Hwang, NeurIPS 2022),
https://arxiv.org/abs/2210.11672. ASH passes the top-k percent of a sample's activations and zeroes the rest; the
k-th percentile is estimated under a Gaussian assumption as ``mean + z_k * std`` with ``z_k = Phi^-1(1 - k)``
(k = 0.1 gives z_k = 1.2816):

    hard:  ASH(x) = x * 1[x >= mean(x) + z_k * std(x)]
    soft:  ASH(x) = x * sigmoid(alpha * (x - mean(x) - z_k * std(x)))

Statistics are taken over the feature axis (or axes) ``dim`` of each sample, in float32 (population std), then cast
back to the input dtype. ``z_k`` is learnable in the soft form. Whether the paper learns ``alpha`` is unverified:
``learn_alpha`` switches it on (unverified), and the default ``alpha = 1.0`` is ours (unverified).
"""
from __future__ import annotations

import torch
from scipy.stats import norm
from torch import nn

from foundation.errors import ConfigError
from foundation.layers._shape import feature_axis, stat_dtype

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


def _threshold(x: torch.Tensor, dim: int | tuple[int, ...], z: torch.Tensor, layer: str) -> torch.Tensor:
    """``mean + z * std`` over ``dim`` of each sample, computed in float32 and cast back: [...] -> [...] (keepdim)."""
    axes = _axes(x, dim, layer)
    xf = x.to(stat_dtype(x))
    var, mean = torch.var_mean(xf, dim=axes, correction=0, keepdim=True)
    return (mean + z.to(xf.dtype) * var.sqrt()).to(x.dtype)


class ASH(nn.Module):
    """Soft ASH: ``x * sigmoid(alpha * (x - mean(x) - z_k * std(x)))``, stats over ``dim`` per sample.

    Args:
        k: share of activations the layer aims to keep, in (0, 1); sets ``z_k = Phi^-1(1 - k)`` at init.
        alpha: sigmoid sharpness (1.0, unverified); larger approaches the hard form.
        learn_alpha: make ``alpha`` a learnable parameter (unverified whether the paper does).
        dim: feature axis or axes the statistics run over: -1 for tokens [B, N, C], (1, 2, 3) for a whole
            feature map [B, C, H, W].
        device: device of the parameters.
        dtype: dtype of the parameters.

    Raises:
        ConfigError: ``k`` outside (0, 1).
    """

    def __init__(self, k: float = 0.1, alpha: float = 1.0, learn_alpha: bool = False,
                 dim: int | tuple[int, ...] = -1, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
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
        thr = _threshold(x, self.dim, self.z_k, "ASH")
        return x * torch.sigmoid(self.alpha.to(x.dtype) * (x - thr))

    def extra_repr(self) -> str:
        return f"k={self.k}, alpha={self.alpha_init}, dim={self.dim}"


class HardASH(nn.Module):
    """Hard ASH: ``x * 1[x >= mean(x) + z_k * std(x)]``, stats over ``dim`` per sample.

    Keeps about the top ``k`` share of each sample's activations (exactly so for Gaussian activations). The
    threshold depends on ``x``; the gradient is ``1[kept]`` (the indicator's derivative is zero almost everywhere).
    For exactly k kept entries per token use :class:`~foundation.layers.topk.TopKReLU`.

    Args:
        k: share of activations kept, in (0, 1).
        dim: feature axis or axes the statistics run over (see :class:`ASH`).

    Raises:
        ConfigError: ``k`` outside (0, 1).
    """

    def __init__(self, k: float = 0.1, dim: int | tuple[int, ...] = -1) -> None:
        super().__init__()
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
        thr = _threshold(x, self.dim, self.z_k, "HardASH")
        return x * (x >= thr.detach()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}"
