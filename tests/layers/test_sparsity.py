"""Activation-sparsity measurement and the CHESS-like channel-threshold pass, against direct recomputation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers.sparsity import (
    apply_channel_thresholds,
    calibrate_channel_thresholds,
    evaluate_channel_thresholds,
    measure_sparsity,
)


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def test_measure_on_relu_of_known_tensor_equals_direct_count() -> None:
    batches = [_x(6, 10, seed=s) for s in range(3)]
    batches[0][0, :3] = 0.0  # exact zeros in the input stay zeros
    report = measure_sparsity(nn.Sequential(nn.ReLU()), batches, rel_thresholds=(0.0, 0.1, 0.5))
    a = torch.relu(torch.cat(batches))
    layer = report["0"]
    assert layer.numel == a.numel()
    assert layer.zero_share == (a == 0).sum().item() / a.numel()
    assert layer.max_abs == a.abs().max().item()
    for r in (0.0, 0.1, 0.5):
        assert layer.near_zero_share[r] == (a.abs() <= r * a.abs().max()).sum().item() / a.numel()


def test_measure_picks_registered_activations_of_an_mlp() -> None:
    net = _mlp()
    batches = [(_x(5, 8, seed=s), torch.zeros(5)) for s in range(2)]
    report = measure_sparsity(net, batches)
    assert set(report) == {"1", "3"}  # GELU and ReLU, not the Linear layers
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        h1 = net[1](net[0](x))
        h2 = net[3](net[2](h1))
    assert report["1"].zero_share == (h1 == 0).sum().item() / h1.numel()
    assert report["3"].zero_share == (h2 == 0).sum().item() / h2.numel()
    assert report["3"].near_zero_share[0.1] == pytest.approx((h2.abs() <= 0.1 * h2.abs().max()).float().mean().item())
    named = measure_sparsity(net, batches, modules=["0"])  # any module by name
    assert set(named) == {"0"} and named["0"].zero_share == 0.0


def test_calibrated_thresholds_zero_target_share_on_calibration_data() -> None:
    net = _mlp()
    calib = [_x(64, 8, seed=s) for s in range(4)]
    thr = calibrate_channel_thresholds(net, calib, target=0.4, modules=["1"])
    assert thr["1"].shape == (32,)
    report = evaluate_channel_thresholds(net, thr, calib)
    assert report.zero_share["1"] == pytest.approx(0.4, abs=1 / 256)
    with torch.no_grad():
        h = net[1](net[0](torch.cat(calib)))
    per_channel = (h.abs() < thr["1"]).float().mean(0)
    torch.testing.assert_close(per_channel, torch.full((32,), 0.4), atol=1 / 256, rtol=0)


def test_reported_cost_equals_direct_recomputation() -> None:
    net = _mlp()
    calib = [_x(64, 8, seed=s) for s in range(3)]
    held = [(_x(50, 8, seed=10 + s), torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(s)))
            for s in range(3)]
    thr = calibrate_channel_thresholds(net, calib, target=0.8)  # both activations
    accuracy = lambda out, batch: (out.argmax(-1) == batch[1]).float().mean().item()  # noqa: E731
    report = evaluate_channel_thresholds(net, thr, held, metric=accuracy)

    x = torch.cat([b[0] for b in held])
    labels = torch.cat([b[1] for b in held])
    with torch.no_grad():
        dense = net(x)
        h1 = F.gelu(net[0](x))
        h1 = torch.where(h1.abs() >= thr["1"], h1, torch.zeros_like(h1))
        h2 = torch.relu(net[2](h1))
        h2 = torch.where(h2.abs() >= thr["3"], h2, torch.zeros_like(h2))
        sparse = net[4](h2)
    assert report.output_rel_error == pytest.approx(((sparse - dense).norm() / dense.norm()).item(), rel=1e-5)
    acc_d = (dense.argmax(-1) == labels).float().mean().item()
    acc_s = (sparse.argmax(-1) == labels).float().mean().item()
    assert report.metric_dense == pytest.approx(acc_d) and report.metric_sparse == pytest.approx(acc_s)
    assert report.metric_drop == pytest.approx(acc_d - acc_s, abs=1e-6)
    assert report.output_rel_error > 0
    assert report.zero_share["1"] == pytest.approx((h1 == 0).float().mean().item())
    dense_h2 = torch.relu(net[2](F.gelu(net[0](x))))
    assert report.dense_zero_share["3"] == pytest.approx((dense_h2 == 0).float().mean().item())
    total = (h1 == 0).sum() + (h2 == 0).sum()
    assert report.overall_zero_share == pytest.approx(total.item() / (h1.numel() + h2.numel()))
    # the hooks are gone afterwards: the model is dense again
    with torch.no_grad():
        torch.testing.assert_close(net(x), dense)


def test_channel_axis_of_feature_maps() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    calib = [_x(4, 3, 8, 8, seed=s) for s in range(2)]
    thr = calibrate_channel_thresholds(net, calib, target=0.7, dim=1)
    assert thr["1"].shape == (6,)
    x = calib[0]
    with apply_channel_thresholds(net, thr, dim=1), torch.no_grad():
        y = net(x)
    with torch.no_grad():
        h = torch.relu(net[0](x))
        h = torch.where(h.abs() >= thr["1"].view(1, 6, 1, 1), h, torch.zeros_like(h))
        torch.testing.assert_close(y, net[2](h))


def test_errors() -> None:
    net = _mlp()
    data = [_x(4, 8)]
    for bad in (0.0, 1.0, 1.2):
        with pytest.raises(ConfigError, match=r"target .* must lie in \(0, 1\)"):
            calibrate_channel_thresholds(net, data, target=bad)
    with pytest.raises(ConfigError, match=r"no module named '5'.*valid: 0, 1, 2, 3, 4"):
        measure_sparsity(net, data, modules=["5"])
    with pytest.raises(ConfigError, match="one-shot iterator"):
        measure_sparsity(net, iter(data))
    with pytest.raises(ConfigError, match="holds no registered activation layer"):
        measure_sparsity(nn.Linear(8, 2), data)
    with pytest.raises(ConfigError, match=r"relative thresholds must lie in \[0, 1\]"):
        measure_sparsity(net, data, rel_thresholds=(2.0,))
    with pytest.raises(DataError, match="yielded no batch"):
        measure_sparsity(net, [])
    thr = calibrate_channel_thresholds(net, data, target=0.5, modules=["1"])
    with pytest.raises(ConfigError, match=r"no module named '9'"):
        apply_channel_thresholds(net, {"9": thr["1"]})
    with pytest.raises(DataError, match="expected 8 features on axis -1, received 32"):
        with apply_channel_thresholds(net, {"1": thr["1"][:8]}), torch.no_grad():
            net(torch.zeros(2, 8))
    with torch.no_grad():  # the failed pass left no hook behind
        torch.testing.assert_close(net(data[0]), net[4](net[3](net[2](net[1](net[0](data[0]))))))
