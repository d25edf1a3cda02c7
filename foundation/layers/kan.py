"""KANLinear: a Kolmogorov-Arnold layer with B-spline, RBF, Chebyshev, Fourier or wavelet basis.

Liu et al., "KAN: Kolmogorov-Arnold Networks", https://arxiv.org/abs/2404.19756.
Each edge (i -> o) carries phi_oi(x_i) = w_b[o, i] * act(x_i) + sum_m c[o, i, m] B_m(x_i).
The paper's per-edge spline scale w_s is folded into the coefficients c (it is
redundant with them). The fast form (efficient-kan, FastKAN, ChebyKAN):

    y = base(act(x)) + spline(flatten(B(x)))      B(x): [B, D_in, M] -> [B, D_in * M]

so the basis is computed once per input value and the spline term is ONE matrix
multiply; no [B, D_in, D_out] tensor is built. ``base`` and ``spline`` are
``nn.Linear`` modules, so peft LoRA can target them by name.

Inputs outside the grid. A B-spline, RBF or wavelet term vanishes away from its
grid, so an input that drifts out of ``grid_range`` would silently lose its
spline term. :class:`KANInputNorm` sits in front of the basis and decides:

* ``"tanh"`` (default): x -> lo + (tanh(x) + 1) / 2 * (hi - lo), always inside the grid.
* ``"minmax"``: per-feature running min / max (momentum, like BatchNorm
  statistics; [-1, 1] before the first training batch) map the seen range onto
  the grid; values beyond the running range are clamped to the grid edge, so
  they keep the edge value of the spline (and get no gradient through the
  spline term).
* ``"none"``: raw inputs; the spline term is 0 outside the extended grid.
  Only for inputs already known to lie in ``grid_range``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from foundation.errors import ConfigError, did_you_mean
from foundation.layers.create_act import make_activation
from foundation.layers.kan_basis import BASES, basis_size, check_grid, make_basis

__all__ = ["INPUT_NORMS", "KANInputNorm", "KANLinear"]

INPUT_NORMS = ("minmax", "none", "tanh")


class KANInputNorm(nn.Module):
    """Maps inputs into the grid range before a KAN basis.

    Args:
        num_features: D, the size of the last input axis.
        mode: "tanh", "minmax" or "none" (see the module docstring).
        grid_range: (lo, hi) of the basis grid.
        momentum: running min / max update rate for "minmax" (unverified default 0.1).
        device: parameter device.
        dtype: parameter dtype.

    Raises:
        ConfigError: unknown mode.
    """

    def __init__(
        self,
        num_features: int,
        mode: str = "tanh",
        grid_range: tuple[float, float] = (-1.0, 1.0),
        momentum: float = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if mode not in INPUT_NORMS:
            raise ConfigError(f"KAN input_norm: unknown mode {mode!r}; {did_you_mean(str(mode), INPUT_NORMS)}")
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"KAN input_norm: momentum must be in (0, 1], got {momentum!r}")
        self.mode = mode
        self.lo, self.hi = float(grid_range[0]), float(grid_range[1])
        self.momentum = momentum
        if mode == "minmax":
            kw = {"device": device, "dtype": dtype}
            self.register_buffer("running_min", torch.full((num_features,), -1.0, **kw))
            self.register_buffer("running_max", torch.full((num_features,), 1.0, **kw))
            self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map x [..., D] into [lo, hi] -> [..., D]."""
        if self.mode == "none":
            return x
        if self.mode == "tanh":
            return self.lo + (torch.tanh(x) + 1) * (0.5 * (self.hi - self.lo))
        if self.training:
            with torch.no_grad():
                flat = x.detach().reshape(-1, x.shape[-1])  # [..., D] -> [B', D]
                bmin, bmax = flat.amin(0).to(self.running_min), flat.amax(0).to(self.running_max)
                if self.num_batches_tracked == 0:
                    self.running_min.copy_(bmin)
                    self.running_max.copy_(bmax)
                else:
                    self.running_min.lerp_(bmin, self.momentum)
                    self.running_max.lerp_(bmax, self.momentum)
                self.num_batches_tracked += 1
        span = (self.running_max - self.running_min).clamp_min(1e-6)
        z = self.lo + (x - self.running_min) / span * (self.hi - self.lo)
        return z.clamp(self.lo, self.hi)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, grid_range=({self.lo}, {self.hi})"


class KANLinear(nn.Module):
    """Kolmogorov-Arnold layer: y = base(act(x)) + spline(flatten(B(norm(x)))).

    Args:
        in_features: D_in.
        out_features: D_out.
        basis: "bspline", "rbf", "chebyshev", "fourier" or "wavelet".
        grid_size: grid intervals (bspline), centres (rbf, wavelet), degree
            (chebyshev) or highest frequency (fourier); >= 1.
        spline_order: B-spline degree k (bspline only); >= 1.
        grid_range: (lo, hi) of the grid; the Fourier basis takes it as one period.
        input_norm: "tanh", "minmax" or "none"; how inputs are kept on the grid.
        base_act_layer: activation of the residual base term, a registered name or class
            (paper: SiLU); None gives a linear base term.
        bias: add a learnable bias (in ``base``).
        spline_init_scale: std of the spline coefficients times sqrt(D_in)
            (unverified default 0.1, close to efficient-kan's noise scale).
        device: parameter device.
        dtype: parameter dtype.

    Raises:
        ConfigError: unknown basis or input_norm, grid_size or spline_order < 1,
            empty grid range.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        basis: str = "bspline",
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        input_norm: str = "tanh",
        base_act_layer: str | type[nn.Module] | None = "silu",
        bias: bool = True,
        spline_init_scale: float = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if basis not in BASES:
            raise ConfigError(f"KANLinear: unknown basis {basis!r}; {did_you_mean(str(basis), BASES)}")
        check_grid(grid_size, spline_order, grid_range, where=f"KANLinear(basis={basis!r})")
        self.in_features, self.out_features = in_features, out_features
        self.basis, self.grid_size, self.spline_order = basis, grid_size, spline_order
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.num_basis = basis_size(basis, grid_size, spline_order)
        self.spline_init_scale = spline_init_scale
        kw = {"device": device, "dtype": dtype}
        self.norm = KANInputNorm(in_features, input_norm, self.grid_range, **kw)
        self.act = make_activation(base_act_layer, num_features=in_features, where="KANLinear base_act_layer")
        self.base = nn.Linear(in_features, out_features, bias=bias, **kw)
        self.spline = nn.Linear(in_features * self.num_basis, out_features, bias=False, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Base term as nn.Linear's default; spline coefficients N(0, (scale / sqrt(D_in))^2)."""
        self.base.reset_parameters()
        nn.init.normal_(self.spline.weight, std=self.spline_init_scale / math.sqrt(self.in_features))

    def compute_basis(self, x: torch.Tensor) -> torch.Tensor:
        """Basis of the normalised inputs: x [..., D_in] -> [..., D_in, M]."""
        return make_basis(self.basis, self.norm(x), self.grid_size, self.spline_order, self.grid_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Args:
            x: [..., D_in].

        Returns:
            [..., D_out].
        """
        *lead, d = x.shape
        x = x.reshape(-1, d)  # [..., D_in] -> [B, D_in]
        feats = self.compute_basis(x).flatten(1)  # [B, D_in, M] -> [B, D_in * M]
        y = self.base(self.act(x)) + self.spline(feats)  # [B, D_out]
        return y.reshape(*lead, self.out_features)  # [B, D_out] -> [..., D_out]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, basis={self.basis!r}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}, grid_range={self.grid_range}"
        )
