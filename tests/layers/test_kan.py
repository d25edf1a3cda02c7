"""KANLinear and its bases against closed forms and a naive per-edge implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from foundation.errors import ConfigError
from foundation.layers.kan import KANInputNorm, KANLinear
from foundation.layers.kan_basis import (
    BASES,
    basis_size,
    bspline_basis,
    cardinal_bspline,
    chebyshev_basis,
    make_basis,
)


def _knots(g: int, k: int, lo: float, hi: float) -> np.ndarray:
    h = (hi - lo) / g
    return np.array([lo + (j - k) * h for j in range(g + 2 * k + 1)])


@pytest.mark.parametrize("g,k", [(5, 3), (4, 1), (7, 2), (3, 4)])
def test_bspline_basis_matches_scipy(g: int, k: int) -> None:
    lo, hi = -1.5, 2.0
    t = _knots(g, k, lo, hi)
    x = np.linspace(t[0] - 0.3, t[-1] + 0.3, 257)
    ours = bspline_basis(torch.tensor(x)[:, None], g, k, (lo, hi))[:, 0].numpy()
    ref = np.stack([np.nan_to_num(BSpline.basis_element(t[j : j + k + 2], extrapolate=False)(x)) for j in range(g + k)], -1)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    inside = (x >= lo) & (x < hi)
    np.testing.assert_allclose(ours[inside].sum(-1), 1.0, atol=1e-12)  # partition of unity on the grid


def test_cardinal_bspline_closed_form_is_the_piecewise_polynomial_used() -> None:
    u = torch.linspace(-1, 6, 301, dtype=torch.float64)
    k = 3
    # the truncated-power closed form against scipy's cardinal cubic B-spline
    ref = np.nan_to_num(BSpline.basis_element(np.arange(k + 2.0), extrapolate=False)(u.numpy()))
    np.testing.assert_allclose(cardinal_bspline(u, k).numpy(), ref, atol=1e-12)
    # basis on the unit grid lo=0, G large: basis j at x equals M_k(x - t_j)
    x = torch.rand(50, 1, dtype=torch.float64) * 4 + 1
    b = bspline_basis(x, 8, k, (0.0, 8.0))[:, 0]
    for j in range(8 + k):
        torch.testing.assert_close(b[:, j], cardinal_bspline(x[:, 0] - (j - k), k))


def test_rbf_wavelet_chebyshev_fourier_closed_forms() -> None:
    x = torch.linspace(-0.99, 0.99, 41, dtype=torch.float64)[:, None]
    xn = x[:, 0].numpy()
    c = np.linspace(-1, 1, 6)
    h = 2 / 5
    np.testing.assert_allclose(make_basis("rbf", x, 6, 3, (-1, 1))[:, 0], np.exp(-(((xn[:, None] - c) / h) ** 2)))
    z2 = ((xn[:, None] - c) / h) ** 2
    np.testing.assert_allclose(make_basis("wavelet", x, 6, 3, (-1, 1))[:, 0], (1 - z2) * np.exp(-z2 / 2))
    cheb = np.stack([np.polynomial.chebyshev.chebval(xn, np.eye(5)[n]) for n in range(5)], -1)
    np.testing.assert_allclose(make_basis("chebyshev", x, 4, 3, (-1, 1))[:, 0], cheb, atol=1e-12)
    m = np.arange(1, 4)
    four = np.concatenate([np.cos(np.pi * xn[:, None] * m), np.sin(np.pi * xn[:, None] * m)], -1)
    np.testing.assert_allclose(make_basis("fourier", x, 3, 3, (-1, 1))[:, 0], four, atol=1e-12)


def test_chebyshev_clamp_keeps_gradient_finite_at_the_edges() -> None:
    x = torch.tensor([[-1.0], [1.0], [0.3]], dtype=torch.float64, requires_grad=True)
    chebyshev_basis(x, 5).sum().backward()
    assert torch.isfinite(x.grad).all()


def _naive_bspline_kan(layer: KANLinear, x: np.ndarray) -> np.ndarray:
    """Loop over every edge (i -> o) with scipy's BSpline on the layer's coefficients."""
    g, k = layer.grid_size, layer.spline_order
    t = _knots(g, k, *layer.grid_range)
    cs = layer.spline.weight.detach().double().numpy().reshape(layer.out_features, layer.in_features, -1)
    wb = layer.base.weight.detach().double().numpy()
    out = np.zeros((x.shape[0], layer.out_features)) + layer.base.bias.detach().double().numpy()
    silu = x / (1 + np.exp(-x))
    elements = [BSpline.basis_element(t[j : j + k + 2], extrapolate=False) for j in range(g + k)]
    for o in range(layer.out_features):
        for i in range(layer.in_features):
            # inside [lo, hi] the whole spline is one scipy BSpline; on the extended knots outside it,
            # sum the coefficient-weighted basis elements (scipy's BSpline(t, c, k) is NaN there)
            spline = BSpline(t, cs[o, i], k, extrapolate=False)(x[:, i])
            by_element = sum(cs[o, i, j] * np.nan_to_num(e(x[:, i])) for j, e in enumerate(elements))
            inside = ~np.isnan(spline)
            np.testing.assert_allclose(spline[inside], by_element[inside], atol=1e-12)
            out[:, o] += wb[o, i] * silu[:, i] + by_element
    return out


def test_bspline_kan_matches_naive_per_edge_implementation() -> None:
    torch.manual_seed(0)
    layer = KANLinear(3, 4, "bspline", grid_size=5, spline_order=3, grid_range=(-1, 1), input_norm="none")
    layer.double()
    torch.nn.init.normal_(layer.spline.weight)  # non-trivial coefficients
    x = torch.rand(64, 3, dtype=torch.float64) * 3.2 - 1.6  # inside and around the extended grid
    np.testing.assert_allclose(layer(x).detach().numpy(), _naive_bspline_kan(layer, x.numpy()), atol=1e-10)


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("input_norm", ["tanh", "minmax", "none"])
def test_gradcheck_every_basis(basis: str, input_norm: str) -> None:
    torch.manual_seed(0)
    layer = KANLinear(3, 2, basis, grid_size=4, spline_order=2, input_norm=input_norm).double()
    layer(torch.randn(16, 3, dtype=torch.float64))  # one training batch sets the min-max statistics
    layer.eval()
    x = (torch.rand(5, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))
    params = tuple(p for p in layer.parameters())
    assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(
        layer, dict(zip([n for n, _ in layer.named_parameters()], ps)), (x.detach(),)), params)


def test_inputs_outside_the_grid_keep_the_spline_term() -> None:
    x = torch.tensor([[-50.0, 0.0, 50.0]], dtype=torch.float64)
    for mode in ("tanh", "minmax"):
        norm = KANInputNorm(3, mode, (-1.0, 1.0)).double()
        if mode == "minmax":
            norm(torch.randn(32, 3, dtype=torch.float64))  # statistics from "training" data in about [-3, 3]
            norm.eval()
        basis = bspline_basis(norm(x), 5, 3, (-1.0, 1.0))
        # partition of unity: the spline term of every far-away input is still there
        torch.testing.assert_close(basis.sum(-1), torch.ones(1, 3, dtype=torch.float64))
    raw = bspline_basis(x, 5, 3, (-1.0, 1.0))
    assert raw[0, 0].abs().sum() == 0 and raw[0, 2].abs().sum() == 0  # "none" documents the loss


def test_minmax_running_statistics() -> None:
    norm = KANInputNorm(2, "minmax", (0.0, 1.0), momentum=0.5)
    a = torch.tensor([[0.0, -2.0], [4.0, 2.0]])
    norm(a)
    torch.testing.assert_close(norm.running_min, torch.tensor([0.0, -2.0]))
    b = torch.tensor([[2.0, -4.0], [6.0, 0.0]])
    norm(b)
    torch.testing.assert_close(norm.running_min, torch.tensor([1.0, -3.0]))
    torch.testing.assert_close(norm.running_max, torch.tensor([5.0, 1.0]))
    norm.eval()
    torch.testing.assert_close(norm(torch.tensor([[3.0, -0.5], [99.0, -99.0]])), torch.tensor([[0.5, 0.625], [1.0, 0.0]]))


@pytest.mark.parametrize("basis", BASES)
def test_leading_axes_and_parameter_count(basis: str) -> None:
    layer = KANLinear(6, 5, basis, grid_size=4)
    x = torch.randn(2, 3, 6)
    y = layer(x)
    assert y.shape == (2, 3, 5)
    torch.testing.assert_close(y.reshape(6, 5), layer(x.reshape(6, 6)))
    m = basis_size(basis, 4, 3)
    assert sum(p.numel() for p in layer.parameters()) == 6 * 5 * (m + 1) + 5


@pytest.mark.parametrize("grid_size", [0, -3])
def test_bad_grid_size(grid_size: int) -> None:
    with pytest.raises(ConfigError, match=r"grid_size must be a positive integer, got " + str(grid_size)):
        KANLinear(4, 4, grid_size=grid_size)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown basis 'bsplin'; did you mean 'bspline'"):
        KANLinear(4, 4, basis="bsplin")
    with pytest.raises(ConfigError, match=r"spline_order must be an integer >= 1"):
        KANLinear(4, 4, spline_order=0)
    with pytest.raises(ConfigError, match=r"grid_range must be \(low, high\) with high > low"):
        KANLinear(4, 4, grid_range=(1.0, -1.0))
    with pytest.raises(ConfigError, match=r"unknown mode 'minmx'; did you mean 'minmax'"):
        KANLinear(4, 4, input_norm="minmx")


def test_no_batch_by_in_by_out_tensor_is_saved() -> None:
    """Autograd keeps nothing of size B * D_in * D_out (the fast form)."""
    layer = KANLinear(32, 48, "bspline", grid_size=3, spline_order=1)
    x = torch.randn(64, 32)
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        layer(x).sum().backward()
    assert max(sizes) < 64 * 32 * 48
    assert math.prod((64, 32, 4)) in sizes  # the basis [B, D_in, G+k] itself is what is kept


@pytest.mark.parametrize("basis", BASES)
def test_basis_gradcheck_including_outside_the_grid(basis: str) -> None:
    """The recomputing backward of every basis against finite differences, in and out of the grid."""
    x = torch.tensor([[-2.3, -0.93, -0.41, 0.07, 0.52, 0.9993, 1.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: make_basis(basis, t, 4, 3, (-1.0, 1.0)), (x,))


def test_bspline_fast_path_inside_the_grid_matches_scipy() -> None:
    """All inputs inside [lo, hi) take the path without range masks; same values as scipy."""
    g, k, lo, hi = 6, 3, -1.0, 1.0
    t = _knots(g, k, lo, hi)
    x = np.linspace(lo, hi - 1e-9, 97)
    ours = bspline_basis(torch.tensor(x)[:, None], g, k, (lo, hi))[:, 0].numpy()
    ref = np.stack([np.nan_to_num(BSpline.basis_element(t[j : j + k + 2], extrapolate=False)(x)) for j in range(g + k)], -1)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("basis", BASES)
def test_chunked_backward_matches_finite_differences(basis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backward passes split into row chunks (tiny chunks forced here) give the same gradients."""
    import foundation.layers.kan_basis as kan_basis

    monkeypatch.setattr(kan_basis, "_CHUNK", 40)  # 1-3 rows per chunk
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: make_basis(basis, t, 4, 3, (-1.0, 1.0)), (x,))
