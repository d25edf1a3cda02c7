"""The activation factory: every registered name builds, errors name the closest valid name."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.layers.create_act import get_act_layer, make_activation
from foundation.registry import ACTIVATIONS

REQUIRED = ["gelu", "relu", "silu", "tanh", "identity", "crrelu", "ash", "ash-hard", "selu", "dice", "proact",
            "topk-relu", "evonorm-b0", "evonorm-s0"]


def test_required_names_are_registered() -> None:
    missing = sorted(set(REQUIRED) - set(ACTIVATIONS.names()))
    assert not missing, missing


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_activation_builds_runs_and_backprops_on_tokens(name: str) -> None:
    act = make_activation(name, num_features=64)
    assert isinstance(act, get_act_layer(name))
    x = torch.randn(2, 5, 64, requires_grad=True)
    y = act(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_registered_classes_reset_parameters_convention(name: str) -> None:
    """Our layers with parameters allocate them and fill them in reset_parameters()."""
    cls = get_act_layer(name)
    has_params = any(True for _ in make_activation(cls, num_features=64).parameters())
    if cls.__module__.startswith("foundation.") and has_params:
        assert callable(getattr(cls, "reset_parameters", None)), name


def test_channel_axis_layers_take_dim() -> None:
    for name in ["ash", "ash-hard", "dice", "proact", "topk-relu", "evonorm-b0", "evonorm-s0"]:
        assert "dim" in inspect.signature(get_act_layer(name).__init__).parameters, name
    act = make_activation("dice", num_features=4, dim=1)
    assert act(torch.randn(3, 4, 5, 5)).shape == (3, 4, 5, 5)


def test_class_and_none_pass_through() -> None:
    assert get_act_layer(nn.GELU) is nn.GELU
    assert get_act_layer(None) is None
    assert isinstance(make_activation(None), nn.Identity)
    assert isinstance(make_activation(nn.SiLU), nn.SiLU)


def test_kwargs_reach_constructor_and_num_features_only_where_taken() -> None:
    act = make_activation("ash", k=0.3, num_features=32)
    assert act.k == 0.3
    assert isinstance(make_activation("gelu", num_features=32, approximate="tanh"), nn.GELU)
    dice = make_activation("dice", num_features=7)
    assert dice.alpha.shape == (7,)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown activation 'crelu'; did you mean 'crrelu'\? valid: .*gelu"):
        make_activation("crelu")
    with pytest.raises(ConfigError, match=r"recipe tiny.yaml, key model.activation: unknown activation 'gelo'"):
        get_act_layer("gelo", where="recipe tiny.yaml, key model.activation")


def test_bad_types_and_keywords() -> None:
    with pytest.raises(ConfigError, match=r"received GELU\(approximate='none'\) of type GELU"):
        get_act_layer(nn.GELU())
    with pytest.raises(ConfigError, match=r"CRReLU does not take \['k'\]; it accepts: eps_init, fused, device, dtype"):
        make_activation("crrelu", k=3)
    with pytest.raises(ConfigError, match="activation is None"):
        make_activation(None, k=3)
    with pytest.raises(ConfigError, match="Dice: num_features is missing"):
        make_activation("dice")


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_bfloat16_keeps_dtype(name: str) -> None:
    """bf16 input: our layers also accept float32 parameters (autocast style); every layer runs after .bfloat16()."""
    x = torch.randn(2, 3, 64)
    ref = make_activation(name, num_features=64)(x)
    modules = [make_activation(name, num_features=64).bfloat16()]
    if get_act_layer(name).__module__.startswith("foundation."):
        modules.append(make_activation(name, num_features=64))
    for act in modules:
        y = act(x.bfloat16())
        assert y.dtype == torch.bfloat16
        close = torch.isclose(y.float(), ref, atol=0.1, rtol=0.05)
        if name in ("ash-hard", "topk-relu"):  # hard selections may flip for entries at the threshold
            assert close.float().mean() > 0.97
        else:
            assert close.all()
