"""AF-KAN: activation-pair basis (ReLU-KAN closed form), attention over the basis, LN -> f -> linear."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foundation.errors import ConfigError
from foundation.layers.afkan import AF_FUNCTIONS, AFKANLinear


def test_relu_basis_is_relu_kan() -> None:
    g, k = 4, 2
    layer = AFKANLinear(1, 1, functions=("relu",), grid_size=g, spline_order=k, input_norm="none", attention=False)
    layer.double()
    x = np.linspace(-1.8, 1.8, 201)
    ours = layer.compute_basis(torch.tensor(x)[:, None])[:, 0].detach().numpy()
    # ReLU-KAN (Qiu et al.): phase_low = arange(-k, g) / g on [0, 1]; here the grid is [-1, 1]
    w = 2 / g
    low = -1 + (np.arange(g + k) - k) * w
    high = low + (k + 1) * w
    r = 4 / ((k + 1) * w) ** 2
    ref = (r * np.maximum(x[:, None] - low, 0) * np.maximum(high - x[:, None], 0)) ** 2
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # each bump peaks at 1 in the middle of its support
    mid = torch.tensor((low + high) / 2)[:, None]
    peaks = layer.compute_basis(mid)[:, 0].detach().numpy()
    np.testing.assert_allclose(np.diag(peaks), 1.0, atol=1e-12)


@pytest.mark.parametrize("combination", ["sum", "product"])
def test_function_combinations(combination: str) -> None:
    kw = {"grid_size": 3, "spline_order": 2, "input_norm": "none", "attention": False}
    both = AFKANLinear(2, 3, functions=("silu", "gelu"), combination=combination, **kw).double()
    x = torch.rand(5, 2, dtype=torch.float64) * 2 - 1
    parts = [AFKANLinear(2, 3, functions=(f,), **kw).double().compute_basis(x) for f in ("silu", "gelu")]
    expected = parts[0] + parts[1] if combination == "sum" else parts[0] * parts[1]
    torch.testing.assert_close(both.compute_basis(x), expected)


def test_attention_starts_as_identity_and_forward_formula() -> None:
    torch.manual_seed(0)
    layer = AFKANLinear(3, 4, functions=("selu",)).double()
    plain = AFKANLinear(3, 4, functions=("selu",), attention=False).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    basis = layer.compute_basis(x.reshape(-1, 3))
    torch.testing.assert_close(basis, plain.compute_basis(x.reshape(-1, 3)))
    with torch.no_grad():
        layer.attn.normal_()
    basis = layer.compute_basis(x.reshape(-1, 3))
    raw = plain.compute_basis(x.reshape(-1, 3))
    torch.testing.assert_close(basis, raw * torch.softmax(raw @ layer.attn, -1) * layer.num_basis)
    feats = basis.flatten(1)
    ln = F.layer_norm(feats, feats.shape[-1:], layer.layer_norm.weight, layer.layer_norm.bias)
    expected = F.linear(F.silu(ln), layer.linear.weight, layer.linear.bias).reshape(2, 5, 4)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("functions", [("relu",), ("gelu", "elu"), ("softplus", "mish")])
def test_gradcheck(functions: tuple[str, ...]) -> None:
    torch.manual_seed(1)
    layer = AFKANLinear(3, 2, functions=functions, grid_size=3, spline_order=2).double()
    with torch.no_grad():
        layer.attn.normal_()
    x = torch.randn(4, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))
    names = ["low", "high", "attn"]
    params = tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x.detach(),))

    assert torch.autograd.gradcheck(f, params)


def test_every_listed_function_runs() -> None:
    for f in AF_FUNCTIONS:
        y = AFKANLinear(3, 2, functions=(f,))(torch.randn(4, 3))
        assert y.shape == (4, 2) and torch.isfinite(y).all()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown function 'sellu' in functions; did you mean 'selu'"):
        AFKANLinear(2, 2, functions=("sellu",))
    with pytest.raises(ConfigError, match=r"unknown combination 'prod'; did you mean 'product'"):
        AFKANLinear(2, 2, combination="prod")
    with pytest.raises(ConfigError, match=r"grid_size must be a positive integer, got 0"):
        AFKANLinear(2, 2, grid_size=0)
