"""Basis functions of the KAN family, each computed once per input value.

Every function maps x [..., D] to a basis tensor [..., D, M] (M basis functions
per input feature). A KAN layer then flattens the last two axes and runs ONE
matrix multiply, so no [B, D_in, D_out] tensor is ever built.

* B-spline on a uniform grid (Liu et al., "KAN: Kolmogorov-Arnold Networks",
  https://arxiv.org/abs/2404.19756). On a uniform grid every basis function is a
  shifted cardinal B-spline, so we evaluate the k+1 non-zero pieces directly from
  the truncated-power closed form and scatter them into place; no Cox-de Boor
  recursion over the whole [..., D, G+k] tensor.
* RBF (Li, "Kolmogorov-Arnold Networks are Radial Basis Function Networks",
  https://arxiv.org/abs/2405.06721): exp(-((x - g_i) / h)^2).
* Chebyshev (SS et al., "Chebyshev Polynomial-Based Kolmogorov-Arnold Networks",
  https://arxiv.org/abs/2405.07200): T_n(x) = cos(n acos(x)), x clamped to
  +-(1 - 1e-4) because d acos/dx is infinite at +-1.
* Fourier (FourierKAN, GistNoesis): cos(m x), sin(m x) for m = 1..G.
* Wavelet (Bozorgasl & Chen, "Wav-KAN", https://arxiv.org/abs/2405.12832):
  Mexican-hat wavelets on a uniform grid of translations, one fixed width
  (the fixed width is our simplification (unverified)).
"""
from __future__ import annotations

import functools
import math

import torch

from foundation.errors import ConfigError

__all__ = [
    "BASES",
    "basis_size",
    "bspline_basis",
    "cardinal_bspline",
    "chebyshev_basis",
    "fourier_basis",
    "make_basis",
    "rbf_basis",
    "wavelet_basis",
]

BASES = ("bspline", "chebyshev", "fourier", "rbf", "wavelet")
CHEBYSHEV_CLAMP = 1.0 - 1e-4


def check_grid(grid_size: int, spline_order: int, grid_range: tuple[float, float], where: str) -> None:
    """Validate grid arguments shared by every basis.

    Raises:
        ConfigError: grid_size < 1, spline_order < 1 or an empty grid range.
    """
    if not isinstance(grid_size, int) or grid_size < 1:
        raise ConfigError(f"{where}: grid_size must be a positive integer, got {grid_size!r}; use e.g. grid_size=5")
    if not isinstance(spline_order, int) or spline_order < 1:
        raise ConfigError(
            f"{where}: spline_order must be an integer >= 1 (3 = cubic), got {spline_order!r}; use e.g. spline_order=3"
        )
    lo, hi = grid_range
    if not hi > lo:
        raise ConfigError(f"{where}: grid_range must be (low, high) with high > low, got {tuple(grid_range)!r}")


def basis_size(basis: str, grid_size: int, spline_order: int = 3) -> int:
    """Number M of basis functions per input feature.

    Args:
        basis: one of :data:`BASES`.
        grid_size: number of grid intervals (bspline), centres (rbf, wavelet),
            polynomial degree (chebyshev) or highest frequency (fourier).
        spline_order: B-spline degree k (bspline only).
    """
    return {
        "bspline": grid_size + spline_order,
        "rbf": grid_size,
        "wavelet": grid_size,
        "chebyshev": grid_size + 1,
        "fourier": 2 * grid_size,
    }[basis]


def cardinal_bspline(u: torch.Tensor, k: int) -> torch.Tensor:
    """Cardinal B-spline of degree k, M_k(u), supported on [0, k+1].

    Closed form M_k(u) = 1/k! * sum_{i=0}^{k+1} (-1)^i C(k+1, i) (u - i)_+^k.

    Args:
        u: any shape; values outside [0, k+1] give 0.
        k: degree >= 1.
    """
    out = torch.zeros_like(u)
    for i in range(k + 2):
        out = out + ((-1) ** i * math.comb(k + 1, i)) * torch.clamp(u - i, min=0) ** k
    inside = (u >= 0) & (u <= k + 1)
    return torch.where(inside, out / math.factorial(k), torch.zeros_like(u))


def bspline_basis(x: torch.Tensor, grid_size: int, spline_order: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """B-spline basis on a uniform grid extended by k knots on each side.

    Knots t_j = lo + (j - k) h, j = 0..G+2k, h = (hi - lo) / G; basis j is
    M_k((x - t_j) / h), j = 0..G+k-1. The basis is a partition of unity on
    [lo, hi]; outside [t_0, t_{G+2k}] every value is 0 (the same as Cox-de Boor
    on the extended knot vector, as in pykan and efficient-kan).

    Args:
        x: inputs [..., D].
        grid_size: G intervals in ``grid_range``.
        spline_order: degree k.
        grid_range: (lo, hi).

    Returns:
        Basis [..., D, G+k].
    """
    lo, hi = grid_range
    k, m = spline_order, grid_size + spline_order
    h = (hi - lo) / grid_size
    u = (x - lo) / h + k  # position in knot units from t_0, [..., D]
    cell = torch.floor(u).detach()  # x in [t_cell, t_cell+1)
    frac = u - cell  # [..., D], in [0, 1)
    # basis j = cell - k + r equals M_k(frac + k - r): a degree-k polynomial in frac
    powers = torch.stack([frac**p for p in range(k + 1)], dim=-1)  # [..., D] -> [..., D, k+1]
    coef = torch.tensor(_piece_coefficients(k), device=x.device, dtype=x.dtype)  # [k+1 powers, k+1 pieces]
    pieces = powers @ coef  # [..., D, k+1]
    r = torch.arange(k + 1, device=x.device)
    index = cell.long().unsqueeze(-1) - k + r  # [..., D, k+1]
    valid = (index >= 0) & (index < m)
    pieces = torch.where(valid, pieces, torch.zeros_like(pieces))
    index = index.clamp(0, m - 1)
    out = torch.zeros(*x.shape, m, device=x.device, dtype=x.dtype)  # [..., D, G+k]
    return out.scatter_add(-1, index, pieces)


@functools.lru_cache(maxsize=None)
def _piece_coefficients(k: int) -> tuple[tuple[float, ...], ...]:
    """Polynomial coefficients of the k+1 unit pieces of the cardinal B-spline.

    Piece r is M_k(t + k - r) for t in [0, 1). Only the truncated powers with
    i <= k - r are non-zero there, so M_k(t + k - r) = 1/k! sum_{i<=k-r} (-1)^i
    C(k+1, i) (t + k - r - i)^k; expanding (t + c)^k binomially gives the
    coefficient of t^p. Returns a [k+1 (power p), k+1 (piece r)] table.
    """
    table = [[0.0] * (k + 1) for _ in range(k + 1)]
    for r in range(k + 1):
        for i in range(k - r + 1):
            c = k - r - i
            sign = (-1) ** i * math.comb(k + 1, i)
            for p in range(k + 1):
                table[p][r] += sign * math.comb(k, p) * c ** (k - p) / math.factorial(k)
    return tuple(tuple(row) for row in table)


def rbf_basis(x: torch.Tensor, grid_size: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """Gaussian RBF basis exp(-((x - g_i) / h)^2), G centres spread over ``grid_range``.

    h is the centre spacing (hi - lo) / (G - 1) (the range width when G = 1).

    Returns:
        Basis [..., D, G].
    """
    lo, hi = grid_range
    centres = torch.linspace(lo, hi, grid_size, device=x.device, dtype=x.dtype)
    h = (hi - lo) / max(grid_size - 1, 1)
    return torch.exp(-(((x.unsqueeze(-1) - centres) / h) ** 2))  # [..., D] -> [..., D, G]


def wavelet_basis(x: torch.Tensor, grid_size: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """Mexican-hat wavelets (1 - z^2) exp(-z^2 / 2), z = (x - g_i) / h, G translations.

    Returns:
        Basis [..., D, G].
    """
    lo, hi = grid_range
    centres = torch.linspace(lo, hi, grid_size, device=x.device, dtype=x.dtype)
    h = (hi - lo) / max(grid_size - 1, 1)
    z2 = ((x.unsqueeze(-1) - centres) / h) ** 2  # [..., D] -> [..., D, G]
    return (1 - z2) * torch.exp(-0.5 * z2)


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Chebyshev polynomials T_0..T_degree, T_n(x) = cos(n acos(x)).

    x is clamped to +-(1 - 1e-4) first: acos has an infinite derivative at +-1.
    Map inputs into [-1, 1] beforehand (KANLinear's input_norm does).

    Returns:
        Basis [..., D, degree+1].
    """
    theta = torch.acos(x.clamp(-CHEBYSHEV_CLAMP, CHEBYSHEV_CLAMP))  # [..., D]
    n = torch.arange(degree + 1, device=x.device, dtype=x.dtype)
    return torch.cos(theta.unsqueeze(-1) * n)  # [..., D] -> [..., D, degree+1]


def fourier_basis(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Fourier features [cos(m x) for m = 1..G, sin(m x) for m = 1..G].

    Returns:
        Basis [..., D, 2G].
    """
    m = torch.arange(1, grid_size + 1, device=x.device, dtype=x.dtype)
    mx = x.unsqueeze(-1) * m  # [..., D] -> [..., D, G]
    return torch.cat([torch.cos(mx), torch.sin(mx)], dim=-1)  # -> [..., D, 2G]


def make_basis(
    basis: str, x: torch.Tensor, grid_size: int, spline_order: int, grid_range: tuple[float, float]
) -> torch.Tensor:
    """Evaluate the named basis on x [..., D] -> [..., D, M] (M = :func:`basis_size`).

    The Fourier basis takes ``grid_range`` as one period: x is mapped from
    [lo, hi] to [-pi, pi] first; Chebyshev maps [lo, hi] to [-1, 1], its domain.
    """
    if basis == "bspline":
        return bspline_basis(x, grid_size, spline_order, grid_range)
    if basis == "rbf":
        return rbf_basis(x, grid_size, grid_range)
    if basis == "wavelet":
        return wavelet_basis(x, grid_size, grid_range)
    if basis == "chebyshev":
        lo, hi = grid_range  # [lo, hi] -> [-1, 1], the polynomials' domain
        return chebyshev_basis(2 * (x - lo) / (hi - lo) - 1, grid_size)
    if basis == "fourier":
        lo, hi = grid_range  # one period spans the grid range: [lo, hi] -> [-pi, pi]
        return fourier_basis(math.pi * (2 * (x - lo) / (hi - lo) - 1), grid_size)
    raise ConfigError(f"unknown KAN basis {basis!r}; valid: {', '.join(BASES)}")
