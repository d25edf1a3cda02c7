"""S-KAN: selection over spaces, one-matmul form, pruning."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError
from foundation.layers.kan import KANLinear
from foundation.layers.skan import PrunedSKANLinear, SKANLinear

SPACES = ("bspline", "rbf", "chebyshev", "fourier", "wavelet")


def _layer(seed: int = 0) -> SKANLinear:
    torch.manual_seed(seed)
    layer = SKANLinear(4, 7, spaces=SPACES, grid_size=4, spline_order=2).double()
    torch.nn.init.normal_(layer.selection, std=2.0)
    return layer


def test_matches_the_selection_weighted_sum_of_single_space_kans() -> None:
    layer = _layer()
    x = torch.randn(9, 4, dtype=torch.float64)
    p = layer.selection_weights()
    expected = layer.base(layer.act(x))
    offset = 0
    for s, name in enumerate(SPACES):
        kan = KANLinear(4, 7, name, grid_size=4, spline_order=2, bias=False).double()
        m = kan.num_basis
        kan.spline.weight.data.copy_(layer.coef[:, :, offset : offset + m].flatten(1))
        offset += m
        expected = expected + p[:, s] * kan.spline(kan.compute_basis(x).flatten(1))
    torch.testing.assert_close(layer(x), expected)


def test_selection_is_a_softmax_per_node() -> None:
    p = _layer().selection_weights()
    assert p.shape == (7, len(SPACES))
    torch.testing.assert_close(p.sum(-1), torch.ones(7, dtype=torch.float64))


def test_prune_keeps_the_selected_space_unchanged() -> None:
    layer = _layer(1)
    x = torch.randn(11, 2, 4, dtype=torch.float64)
    pruned = layer.prune()
    assert isinstance(pruned, PrunedSKANLinear)
    chosen = layer.selection_weights().argmax(-1)
    # reference: the full layer with every non-selected space's coefficients zeroed
    ref = _layer(1)
    offsets = torch.cumsum(torch.tensor((0,) + ref.sizes), 0)
    with torch.no_grad():
        for s in range(len(SPACES)):
            ref.coef[chosen != s, :, offsets[s] : offsets[s + 1]] = 0
    torch.testing.assert_close(pruned(x), ref(x))
    # fewer parameters, and only selected spaces are built
    assert set(pruned.splines) == {SPACES[int(s)] for s in chosen.unique()}
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in layer.parameters())


def test_prune_of_a_decided_layer_matches_the_layer() -> None:
    layer = _layer(2)
    with torch.no_grad():
        layer.selection.mul_(1e4)  # one space per node holds all the weight
    x = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(layer.prune()(x), layer(x))


def test_gradcheck() -> None:
    layer = _layer(3)
    x = (torch.rand(3, 4, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))
    sel = layer.selection.detach().clone().requires_grad_()

    def f(selection: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"selection": selection}, (x.detach(),))

    assert torch.autograd.gradcheck(f, (sel,))
    assert torch.autograd.gradcheck(layer.prune(), (x,))


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown space 'fourrier' in spaces; did you mean 'fourier'"):
        SKANLinear(3, 3, spaces=("bspline", "fourrier"))
    with pytest.raises(ConfigError, match=r"spaces must be non-empty and distinct"):
        SKANLinear(3, 3, spaces=("rbf", "rbf"))
    with pytest.raises(ConfigError, match=r"grid_size must be a positive integer, got 0"):
        SKANLinear(3, 3, grid_size=0)
