"""Basis functions of the KAN family, each computed once per input value.

Every function maps x [..., D] to a basis tensor [..., D, M] (M basis functions
per input feature). A KAN layer then flattens the last two axes and runs ONE
matrix multiply, so no [B, D_in, D_out] tensor is ever built.

* B-spline on a uniform grid (Liu et al., "KAN: Kolmogorov-Arnold Networks",
  https://arxiv.org/abs/2404.19756). On a uniform grid every basis function is a
  shifted cardinal B-spline, so the k+1 non-zero values of each input are fixed
  degree-k polynomials of its position inside its grid cell (coefficients expanded
  once from the truncated-power closed form); we evaluate them by Horner's rule and
  scatter them into place; no Cox-de Boor recursion over the [..., D, G+k] tensor.
* RBF (Li, "Kolmogorov-Arnold Networks are Radial Basis Function Networks",
  https://arxiv.org/abs/2405.06721): exp(-((x - g_i) / h)^2).
* Chebyshev (SS et al., "Chebyshev Polynomial-Based Kolmogorov-Arnold Networks",
  https://arxiv.org/abs/2405.07200): T_n(x) = cos(n acos(x)), x clamped to
  +-(1 - 1e-4) because d acos/dx is infinite at +-1.
* Fourier (FourierKAN, GistNoesis): cos(m x), sin(m x) for m = 1..G.
* Wavelet (Bozorgasl & Chen, "Wav-KAN", https://arxiv.org/abs/2405.12832):
  Mexican-hat wavelets on a uniform grid of translations, one fixed width
  (the fixed width is our simplification (unverified)).

Memory. Each basis is a ``torch.autograd.Function`` with a closed-form backward:
the B-spline keeps only x and recomputes the local derivative; the smooth bases
keep x and their output (which the caller's matmul keeps anyway) and derive from
it. Autograd of the plain formulas would keep several [..., D, M] intermediates.
These Functions give first derivatives only (no double backward).
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
    "check_grid",
    "chebyshev_basis",
    "fourier_basis",
    "make_basis",
    "rbf_basis",
    "wavelet_basis",
]

BASES = ("bspline", "chebyshev", "fourier", "rbf", "wavelet")
CHEBYSHEV_CLAMP = 1.0 - 1e-4
_CHUNK = 1 << 22  # basis values per chunk of a backward pass


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


def _bspline_pieces(
    x: torch.Tensor, grid_size: int, k: int, lo: float, hi: float, derivative: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k+1 non-zero B-spline values (or d/dx) of every x and where they go.

    Returns:
        (values [..., D, k+1], index [..., D, k+1] into the G+k basis slots); values
        of slots outside [0, G+k) are 0 and their index is clamped into range.
    """
    m = grid_size + k
    h = (hi - lo) / grid_size
    u = (x - lo) / h + k  # position in knot units from t_0, [..., D]
    cell = torch.floor(u)  # x in [t_cell, t_cell+1)
    frac = (u - cell).unsqueeze(-1)  # [..., D, 1], in [0, 1)
    # basis j = cell - k + r equals M_k(frac + k - r): a degree-k polynomial in frac, Horner's rule
    table = torch.tensor(_piece_coefficients(k), device=x.device, dtype=x.dtype)  # [k+1 powers, k+1 pieces]
    if derivative:  # d/dx = (1/h) d/dfrac: shift the table one power down, times p / h
        table = table[1:] * torch.arange(1, k + 1, device=x.device, dtype=x.dtype).unsqueeze(-1) / h
    values = table[-1].expand(*frac.shape[:-1], k + 1)
    for p in range(table.shape[0] - 2, -1, -1):
        values = torch.addcmul(table[p], values, frac)  # [..., D, k+1]
    # slot j = cell - k + r; a slot outside [0, G+k) (x beyond the extended grid) holds 0 and its index is clamped
    # into range. Elementwise and branch-free, so torch.compile traces it as one graph.
    cell = cell.clamp(-1, m + k)  # far-out x: keep the integer conversion in range
    slots = cell.long().unsqueeze(-1) + torch.arange(-k, 1, device=x.device)  # [..., D, k+1]
    inside = (slots >= 0) & (slots < m)
    return values * inside.to(values.dtype), slots.clamp(0, m - 1)


class _BSplineBasis(torch.autograd.Function):
    """B-spline basis whose backward recomputes the local derivative from x.

    Autograd of the closed form would keep the int64 slot index, the powers and
    the pieces of every input; this keeps only x [..., D] (the caller's matmul
    keeps the basis itself). First derivatives only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid_size: int, k: int, lo: float, hi: float) -> torch.Tensor:
        values, index = _bspline_pieces(x, grid_size, k, lo, hi)
        ctx.save_for_backward(x)
        ctx.args = (grid_size, k, lo, hi)
        out = torch.zeros(*x.shape, grid_size + k, device=x.device, dtype=x.dtype)  # [..., D, G+k]
        return out.scatter_add_(-1, index, values)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        d, m = grad.shape[-2:]
        xs, gs = x.reshape(-1, d), grad.reshape(-1, d, m)  # [..., D(, M)] -> [B', D(, M)]
        step = max(1, _CHUNK // (d * m))
        parts = []
        for i in range(0, xs.shape[0], step):  # row chunks keep the temporaries small
            dvalues, index = _bspline_pieces(xs[i : i + step], *ctx.args, derivative=True)
            parts.append((gs[i : i + step].gather(-1, index) * dvalues).sum(-1))  # [b, D, k+1] -> [b, D]
        return torch.cat(parts).reshape(x.shape), None, None, None, None


def bspline_basis(x: torch.Tensor, grid_size: int, spline_order: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """B-spline basis on a uniform grid extended by k knots on each side.

    Knots t_j = lo + (j - k) h, j = 0..G+2k, h = (hi - lo) / G; basis j is
    M_k((x - t_j) / h), j = 0..G+k-1. The basis is a partition of unity on
    [lo, hi]; outside [t_0, t_{G+2k}] every value is 0 (the same as Cox-de Boor
    on the extended knot vector, as in pykan and efficient-kan). Only the k+1
    non-zero values per input are computed (a degree-k polynomial of the position
    inside its grid cell) and scattered into place.

    Args:
        x: inputs [..., D].
        grid_size: G intervals in ``grid_range``.
        spline_order: degree k.
        grid_range: (lo, hi).

    Returns:
        Basis [..., D, G+k].
    """
    return _BSplineBasis.apply(x, grid_size, spline_order, float(grid_range[0]), float(grid_range[1]))


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


def _smooth(name: str, x: torch.Tensor, grid_size: int, lo: float, hi: float) -> torch.Tensor:
    """Values of the rbf, wavelet, chebyshev or fourier basis: [..., D] -> [..., D, M]."""
    if name in ("rbf", "wavelet"):
        h = (hi - lo) / max(grid_size - 1, 1)
        centres = torch.linspace(lo / h, hi / h, grid_size, device=x.device, dtype=x.dtype)
        z2 = (x / h).unsqueeze(-1).sub(centres).square_()  # ((x - g_i) / h)^2, [..., D] -> [..., D, G]
        if name == "rbf":
            return z2.neg_().exp_()
        return torch.exp(z2 * -0.5).mul_(z2.neg_().add_(1.0))  # (1 - z^2) exp(-z^2 / 2)
    if name == "chebyshev":
        theta = torch.acos(x.clamp(-CHEBYSHEV_CLAMP, CHEBYSHEV_CLAMP)).unsqueeze(-1)  # [..., D, 1]
        n = torch.arange(grid_size + 1, device=x.device, dtype=x.dtype)
        return torch.cos_(theta * n)  # [..., D, degree+1]
    m = torch.arange(1, grid_size + 1, device=x.device, dtype=x.dtype)
    mx = x.unsqueeze(-1) * m  # [..., D] -> [..., D, G]
    return torch.cat([torch.cos(mx), mx.sin_()], dim=-1)  # [..., D, 2G]


def _smooth_grad(
    name: str, x: torch.Tensor, basis: torch.Tensor, grad: torch.Tensor, grid_size: int, lo: float, hi: float
) -> torch.Tensor:
    """sum_m grad_m * dB_m/dx, from x, the saved basis B and grad [..., D, M] -> [..., D].

    rbf: dB/dx = -2 z / h * B; fourier: d cos(mx) = -m sin(mx), d sin(mx) = m cos(mx);
    chebyshev: (1 - x^2) T_n' = n (T_{n-1} - x T_n) (T_0' = 0), zero outside the clamp;
    wavelet (B can vanish, so recomputed): d/dx = z (z^2 - 3) exp(-z^2 / 2) / h.
    """
    if name == "rbf":
        h = (hi - lo) / max(grid_size - 1, 1)
        centres = torch.linspace(lo / h, hi / h, grid_size, device=x.device, dtype=x.dtype)
        z = (x / h).unsqueeze(-1).sub(centres)  # [..., D, G]
        return z.mul_(basis).mul_(grad).sum(-1).mul_(-2.0 / h)
    if name == "wavelet":
        h = (hi - lo) / max(grid_size - 1, 1)
        centres = torch.linspace(lo / h, hi / h, grid_size, device=x.device, dtype=x.dtype)
        z = (x / h).unsqueeze(-1).sub(centres)  # [..., D, G]
        z2 = z * z
        return (torch.exp(z2 * -0.5).mul_(z2.sub_(3.0)).mul_(z).mul_(grad)).sum(-1) / h
    if name == "chebyshev":
        n = torch.arange(1, grid_size + 1, device=x.device, dtype=x.dtype)
        xc = x.clamp(-CHEBYSHEV_CLAMP, CHEBYSHEV_CLAMP).unsqueeze(-1)  # [..., D, 1]
        d = torch.addcmul(basis[..., :-1], xc, basis[..., 1:], value=-1.0)  # T_{n-1} - x T_n, [..., D, degree]
        inside = (x.abs() <= CHEBYSHEV_CLAMP).to(x.dtype)
        return (d.mul_(grad[..., 1:]) @ n) * inside / (1 - xc.squeeze(-1) ** 2)
    g = grid_size
    m = torch.arange(1, g + 1, device=x.device, dtype=x.dtype)
    prod = basis[..., :g] * grad[..., g:]  # cos(mx) * grad_sin
    prod.addcmul_(basis[..., g:], grad[..., :g], value=-1.0)  # - sin(mx) * grad_cos
    return prod @ m  # [..., D, G] @ [G] -> [..., D]


class _SmoothBasis(torch.autograd.Function):
    """rbf / wavelet / chebyshev / fourier basis with a closed-form backward.

    Saves x and the output basis; the basis is the very tensor the caller's matmul
    keeps for its own backward, so saving it costs no memory, and the derivative
    comes from it in a few elementwise passes. First derivatives only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str, grid_size: int, lo: float, hi: float) -> torch.Tensor:
        out = _smooth(name, x, grid_size, lo, hi)
        ctx.save_for_backward(x, out)
        ctx.args = (name, grid_size, lo, hi)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, basis = ctx.saved_tensors
        name, grid_size, lo, hi = ctx.args
        # row chunks of about 4M basis values: the derivative's temporaries stay small next to the basis
        d, m = basis.shape[-2:]
        xs, bs, gs = x.reshape(-1, d), basis.reshape(-1, d, m), grad.reshape(-1, d, m)  # [..., D(, M)] -> [B', D(, M)]
        step = max(1, _CHUNK // (d * m))
        parts = [
            _smooth_grad(name, xs[i : i + step], bs[i : i + step], gs[i : i + step], grid_size, lo, hi)
            for i in range(0, xs.shape[0], step)
        ]
        return torch.cat(parts).reshape(x.shape), None, None, None, None


def rbf_basis(x: torch.Tensor, grid_size: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """Gaussian RBF basis exp(-((x - g_i) / h)^2), G centres spread over ``grid_range``.

    h is the centre spacing (hi - lo) / (G - 1) (the range width when G = 1).

    Returns:
        Basis [..., D, G].
    """
    return _SmoothBasis.apply(x, "rbf", grid_size, float(grid_range[0]), float(grid_range[1]))


def wavelet_basis(x: torch.Tensor, grid_size: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """Mexican-hat wavelets (1 - z^2) exp(-z^2 / 2), z = (x - g_i) / h, G translations.

    Returns:
        Basis [..., D, G].
    """
    return _SmoothBasis.apply(x, "wavelet", grid_size, float(grid_range[0]), float(grid_range[1]))


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Chebyshev polynomials T_0..T_degree, T_n(x) = cos(n acos(x)).

    x is clamped to +-(1 - 1e-4) first: acos has an infinite derivative at +-1.
    Map inputs into [-1, 1] beforehand (KANLinear's input_norm does).

    Returns:
        Basis [..., D, degree+1].
    """
    return _SmoothBasis.apply(x, "chebyshev", degree, -1.0, 1.0)


def fourier_basis(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Fourier features [cos(m x) for m = 1..G, sin(m x) for m = 1..G].

    Returns:
        Basis [..., D, 2G].
    """
    return _SmoothBasis.apply(x, "fourier", grid_size, -1.0, 1.0)


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
