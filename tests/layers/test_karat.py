"""Fourier-KArAt: row operator closed form, rows independent, layouts, gradcheck."""
from __future__ import annotations

import inspect

import pytest
import torch

from foundation.errors import ConfigError
from foundation.layers.attention import Attention
from foundation.layers.karat import KArAt


def _layer(**kw) -> KArAt:
    torch.manual_seed(0)
    return KArAt(8, num_heads=2, max_tokens=6, grid_size=kw.pop("grid_size", 3), rank=4, **kw).double()


def test_signature_matches_attention() -> None:
    ours = list(inspect.signature(KArAt).parameters)
    theirs = [n for n, p in inspect.signature(Attention).parameters.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert ours[: len(theirs)] == theirs
    assert list(inspect.signature(KArAt.forward).parameters) == list(inspect.signature(Attention.forward).parameters)


@pytest.mark.parametrize("grid_size", [1, 3])
def test_row_operator_closed_form(grid_size: int) -> None:
    layer = _layer(grid_size=grid_size, row_norm="none")
    s = torch.randn(5, 5, dtype=torch.float64)
    W, U = layer.attn_down.weight, layer.attn_up.weight  # [r, N_max * 2G], [N_max, r]
    g = grid_size
    z = torch.zeros(5, 5, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            for l in range(layer.rank):
                acc = 0.0
                for k in range(5):
                    for m in range(1, g + 1):
                        acc = acc + W[l, k * 2 * g + m - 1] * torch.cos(m * s[i, k])
                        acc = acc + W[l, k * 2 * g + g + m - 1] * torch.sin(m * s[i, k])
                z[i, j] += U[j, l] * acc
    torch.testing.assert_close(layer.row_operator(s), z)


def test_rows_are_l1_normalised_and_independent() -> None:
    layer = _layer()
    s = torch.randn(2, 5, 5, dtype=torch.float64)
    w = layer.row_operator(s)
    torch.testing.assert_close(w.abs().sum(-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-5, rtol=0)
    s2 = s.clone()
    s2[:, 2] += torch.randn(2, 5, dtype=torch.float64)  # change row 2 only
    w2 = layer.row_operator(s2)
    changed = (w2 - w).abs().amax(-1) > 1e-12
    assert changed[:, 2].all() and not changed[:, [0, 1, 3, 4]].any()


def test_masked_keys_get_zero_weight_and_do_not_matter() -> None:
    layer = _layer()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    y = layer(x, key_padding_mask=mask)
    assert y.shape == (2, 5, 8) and (y[1, 3:] == 0).all()
    x2 = x.clone()
    x2[1, 3:] = torch.randn(2, 8, dtype=torch.float64)  # padding content must not leak
    torch.testing.assert_close(layer(x2, key_padding_mask=mask), y)
    torch.testing.assert_close(y[1, :3], layer(x[1:, :3])[0])  # the same as the short sample alone


def test_packed_equals_dense_per_sample() -> None:
    layer = _layer()
    lengths = [4, 1, 6]
    xs = [torch.randn(n, 8, dtype=torch.float64) for n in lengths]
    cu = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    y = layer(torch.cat(xs), cu_seqlens=cu)
    assert y.shape == (11, 8)
    for i, xi in enumerate(xs):
        torch.testing.assert_close(y[cu[i] : cu[i + 1]], layer(xi[None])[0])


def test_gradcheck() -> None:
    layer = _layer()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    names = ["attn_down.weight", "attn_up.weight"]
    params = tuple(layer.get_parameter(n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (x.detach(),)), params
    )


def test_bad_arguments() -> None:
    layer = _layer()
    with pytest.raises(ConfigError, match=r"7 tokens per sample but the operator covers max_tokens = 6"):
        layer(torch.randn(1, 7, 8, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"grid_size must be a positive integer, received 0"):
        KArAt(8, 2, grid_size=0)
    with pytest.raises(ConfigError, match=r"dim = 8 must be divisible by num_heads = 3"):
        KArAt(8, 3)
    with pytest.raises(ConfigError, match=r"unknown row_norm 'softmax'"):
        KArAt(8, 2, row_norm="softmax")
    with pytest.raises(ConfigError, match=r"with cu_seqlens x must be packed"):
        layer(torch.randn(1, 3, 8, dtype=torch.float64), cu_seqlens=torch.tensor([0, 3], dtype=torch.int32))
