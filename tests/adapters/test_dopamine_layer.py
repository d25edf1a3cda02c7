"""DopamineLayer (soft and hard gate, exact identity at step 0) and SkipInactiveLinear (exact, counted)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.adapters.dopamine import DopamineConfig, DopamineLayer, SkipInactiveLinear


def _layer(**kw) -> tuple[DopamineLayer, nn.Linear]:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    return DopamineLayer(base, "default", DopamineConfig(**kw)), base


def test_exact_identity_at_step_zero_even_for_extreme_activations():
    layer, base = _layer(tau_init=0.5)  # tau inside the activation range: the bypass, not saturation, gives identity
    x = torch.randn(64, 6) * torch.logspace(-30, 30, 64)[:, None]  # float32 values from 1e-30 to 1e30
    for train in (True, False):
        layer.train(train)
        with torch.no_grad():
            out, ref = layer(x), base(x)
        assert float((out - ref).abs().max()) == 0.0
        assert torch.equal(out, ref)


def test_soft_gate_matches_the_equation():
    layer, base = _layer(tau_init=-0.2)
    layer.mix, layer.temperature = 1.0, 0.3
    with torch.no_grad():
        layer.dopamine_gamma["default"].copy_(torch.linspace(0.5, 1.5, 5))
        layer.dopamine_tau["default"].copy_(torch.linspace(-0.5, 0.5, 5))
    x = torch.randn(8, 6)
    h = base(x)
    tau, gamma = layer.dopamine_tau["default"], layer.dopamine_gamma["default"]
    layer.train()
    torch.testing.assert_close(layer(x), gamma * torch.sigmoid((h - tau) / 0.3) * h)
    layer.eval()
    torch.testing.assert_close(layer(x), gamma * (h > tau).float() * h)
    layer.mix = 0.25  # mid warm-up: 1 - m + m * g
    torch.testing.assert_close(layer(x), gamma * (0.75 + 0.25 * (h > tau).float()) * h)


def test_tau_and_gamma_receive_gradients_once_mixed_in():
    layer, _ = _layer()
    layer.train()
    layer(torch.randn(4, 6)).sum().backward()
    assert float(layer.dopamine_tau["default"].grad.abs().sum()) == 0.0  # bypassed at step 0
    assert float(layer.dopamine_gamma["default"].grad.abs().sum()) > 0.0
    layer.zero_grad()
    layer.mix = 1.0
    layer(torch.randn(4, 6)).sum().backward()
    assert float(layer.dopamine_tau["default"].grad.abs().sum()) > 0.0


def test_low_temperature_soft_gate_approaches_the_hard_gate():
    layer, _ = _layer(tau_init=0.1)
    layer.mix = 1.0
    x = torch.randn(256, 6)
    gaps = []
    with torch.no_grad():
        hard = layer.eval()(x)
        layer.train()
        for t in (1.0, 0.1, 0.01, 0.001):
            layer.temperature = t
            gaps.append(float((layer(x) - hard).abs().mean()))
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-2 * gaps[0]


@pytest.mark.parametrize("strategy", ["union", "per-row"])
@pytest.mark.parametrize("shape", [(1, 32), (7, 32), (3, 4, 32)])
def test_skip_inactive_linear_is_exact_and_counts_macs(shape, strategy):
    torch.manual_seed(0)
    base = nn.Linear(32, 9)
    skip = SkipInactiveLinear(base, strategy)
    x = torch.relu(torch.randn(shape))
    x[..., 5:20] = 0.0  # 15 columns dead for every row
    x.reshape(-1, 32)[0, :] = 0.0  # one row entirely inactive: its output is the bias alone
    dead_cols = int((x.reshape(-1, 32) == 0).all(0).sum())
    skip.skipping = True
    with torch.no_grad():
        torch.testing.assert_close(skip(x), base(x), rtol=1e-5, atol=1e-6)
    rows = x.numel() // 32
    assert skip.counts.dense == rows * 32 * 9
    expected = rows * (32 - dead_cols) * 9 if strategy == "union" else int((x != 0).sum()) * 9
    assert skip.counts.done == expected
    assert skip.counts.active_entries == int((x != 0).sum())
    skip.counts.reset()
    assert skip.counts.done == 0


def test_per_row_cache_follows_weight_updates():
    base = nn.Linear(8, 4)
    skip = SkipInactiveLinear(base, "per-row")
    skip.skipping = True
    x = torch.relu(torch.randn(3, 8))
    with torch.no_grad():
        skip(x)
        base.weight.mul_(2.0)  # in-place change bumps the version: the transposed copy is rebuilt
        torch.testing.assert_close(skip(x), base(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="strategy 'rows'; valid: union, per-row"):
        SkipInactiveLinear(base, "rows")


def test_skip_inactive_linear_off_is_plain():
    base = nn.Linear(4, 3)
    skip = SkipInactiveLinear(base)
    x = torch.zeros(2, 4)
    torch.testing.assert_close(skip(x), base(x))
    assert skip.counts.dense == 0
    with pytest.raises(TypeError, match="wraps nn.Linear, got Conv1d"):
        SkipInactiveLinear(nn.Conv1d(2, 2, 1))


def test_gate_activity_is_the_mean_soft_gate_and_pushes_tau_up():
    from foundation.adapters.dopamine import DopamineModel
    from foundation.errors import TrainingError
    from tests.adapters._helpers import make_model

    base, x = make_model("toy")
    model = DopamineModel(base, DopamineConfig(target_modules=("mlp.fc1",), warmup_steps=0, tau_init=0.0))
    with pytest.raises(TrainingError, match="no training-mode forward"):
        model.gate_activity()
    model.train()
    model(x)
    layer = dict(model.dopamine_layers())["blocks.0.mlp.fc1"]
    h = layer.base_layer(x)
    torch.testing.assert_close(model.gate_activity(), torch.sigmoid(h / layer.temperature).mean())
    model.gate_activity().backward()
    assert bool((layer.dopamine_tau["default"].grad <= 0).all())  # gradient descent raises every threshold


def test_a_convolution_is_gated_per_output_channel():
    from foundation.adapters.dopamine.config import DopamineConfig
    from foundation.adapters.dopamine.layer import DopamineLayer

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=1)
    layer = DopamineLayer(conv, "default", DopamineConfig(warmup_steps=0))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        layer.dopamine_tau["default"].copy_(torch.tensor([-1e9, 1e9, -1e9, 1e9]))
        layer.eval()
        out, h = layer(x), conv(x)
    assert layer.out_features == 4 and out.shape == h.shape
    torch.testing.assert_close(out[:, [0, 2]], h[:, [0, 2]])  # open gates pass the channel through
    assert (out[:, [1, 3]] == 0).all()  # closed gates zero the whole channel
