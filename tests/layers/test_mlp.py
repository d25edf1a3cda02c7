"""Mlp against timm, KANMlp, and make_mlp over every registered kind."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn
from timm.layers import Mlp as TimmMlp

from foundation.errors import ConfigError
from foundation.layers.create_mlp import make_mlp
from foundation.layers.kan import KANLinear
from foundation.layers.mlp import KANMlp, Mlp
from foundation.layers.noble import NobleLinear
from foundation.registry import MLPS


def test_mlp_matches_timm_and_loads_its_weights() -> None:
    torch.manual_seed(0)
    ref = TimmMlp(12, 40, 7, act_layer=nn.GELU)
    ours = Mlp(12, 40, 7, act_layer="gelu")
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(ours(x), ref(x))


def test_mlp_signature_matches_timm_siblings() -> None:
    names = list(inspect.signature(Mlp).parameters)
    assert names[:7] == ["in_features", "hidden_features", "out_features", "act_layer", "norm_layer", "bias", "drop"]
    assert {"device", "dtype"} <= set(names)


def test_kan_mlp_is_two_kan_layers() -> None:
    torch.manual_seed(0)
    mlp = KANMlp(5, 9, 3, KANLinear, basis="rbf", grid_size=4)
    x = torch.randn(4, 5)
    torch.testing.assert_close(mlp(x), mlp.fc2(mlp.fc1(x)))
    assert mlp.fc1.out_features == 9 and mlp.fc2.in_features == 9


def test_registry_holds_the_documented_kinds() -> None:
    assert set(MLPS.names()) >= {"mlp", "kan", "skan", "afkan", "noble"}


SMALL_KW = {"noble": {"rank": 2}}  # the default rank 32 is wider than these toy layers


@pytest.mark.parametrize("kind", MLPS.names())
def test_make_mlp_every_kind(kind: str) -> None:
    torch.manual_seed(0)
    kw = SMALL_KW.get(kind, {})
    mlp = make_mlp(kind, 8, 16, 6, activation="silu", **kw).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    y = mlp(x)
    assert y.shape == (2, 3, 6)
    torch.testing.assert_close(y[1], mlp(x[1]))  # leading axes are independent
    y.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mlp.parameters() if p.requires_grad)
    assert make_mlp(kind, 8, 16, **kw)(torch.randn(4, 8)).shape == (4, 8)  # out_features defaults to in_features
    small = make_mlp(kind, 3, 4, 2, activation="silu", **kw).double()
    xs = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (xs,))


def test_make_mlp_passes_keywords() -> None:
    noble = make_mlp("noble", 8, 16, rank=4)
    assert isinstance(noble.fc1, NobleLinear) and noble.fc1.rank == 4 and noble.fc2.rank == 4
    kan = make_mlp("kan", 8, 16, basis="chebyshev", grid_size=3, activation=None)
    assert kan.fc1.basis == "chebyshev" and isinstance(kan.fc1.act, nn.Identity)
    assert isinstance(make_mlp("mlp", 8, 16, activation=nn.ReLU).act, nn.ReLU)


def test_make_mlp_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"key model.mlp: unknown mlp 'kna'; did you mean 'kan'\? valid: afkan, kan, mlp, noble, skan"):
        make_mlp("kna", 8, 16, where="recipe x.yaml, key model.mlp")
    with pytest.raises(ConfigError, match=r"mlp kind 'mlp' does not take \['rank'\]; it accepts: bias, drop"):
        make_mlp("mlp", 8, 16, rank=4)
    with pytest.raises(ConfigError, match=r"rank must be an integer in \[1, min\(in_features, out_features\)\] = \[1, 8\]"):
        make_mlp("noble", 8, 16, rank=9)
    with pytest.raises(ConfigError, match=r"grid_size must be a positive integer, got 0"):
        make_mlp("kan", 8, 16, grid_size=0)
    with pytest.raises(ConfigError, match=r"unknown activation 'gelux'"):
        make_mlp("kan", 8, 16, activation="gelux")
