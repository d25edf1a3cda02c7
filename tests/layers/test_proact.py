"""ProAct: smooth/hard clip formulas, calibration from data (per layer, per neuron, hybrid), errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers.proact import ProAct, calibrate


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_training_form_is_relu_times_smooth_clip() -> None:
    act = ProAct(k=20.0, lam_init=1.5).train()
    x = _x(4, 9) * 3
    torch.testing.assert_close(act(x), torch.relu(x) * torch.sigmoid(-20.0 * (x - 1.5)))


def test_eval_form_is_hard_clip_per_layer_and_per_neuron() -> None:
    x = _x(5, 4) * 3
    act = ProAct(lam_init=1.0).eval()
    torch.testing.assert_close(act(x), torch.where((x >= 0) & (x <= 1.0), x, torch.zeros_like(x)))
    pn = ProAct(num_features=4, per_neuron=True, dim=1).eval()
    lam = torch.tensor([0.5, 1.0, 2.0, 4.0])
    with torch.no_grad():
        pn.lam.copy_(lam)
    x4 = _x(2, 4, 3, 3) * 3
    lam4 = lam.view(1, 4, 1, 1)
    torch.testing.assert_close(pn(x4), torch.where((x4 >= 0) & (x4 <= lam4), x4, torch.zeros_like(x4)))


def _net(per_neuron_last: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), ProAct(), nn.Linear(16, 8),
                         ProAct(num_features=8, per_neuron=per_neuron_last), nn.Linear(8, 2))


def _reference_max_inputs(net: nn.Sequential, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the two ProAct layers when every ProAct is a plain ReLU, computed directly."""
    with torch.no_grad():
        h1 = torch.cat([net[0](b) for b in batches])
        h2 = net[2](torch.relu(h1))
    return h1, h2


def test_calibrate_per_layer_sets_lam_to_max_seen() -> None:
    net = _net().train()
    batches = [_x(10, 6, seed=s) * 4 for s in range(3)]
    out = calibrate(net, batches, per_neuron=False)
    h1, h2 = _reference_max_inputs(net, batches)
    torch.testing.assert_close(net[1].lam.detach(), h1.max())
    torch.testing.assert_close(net[3].lam.detach(), h2.max())
    assert set(out) == {"1", "3"} and net.training  # mode restored


def test_calibrate_per_neuron_and_hybrid() -> None:
    batches = [(_x(10, 6, seed=s) * 4, torch.zeros(10)) for s in range(2)]  # (input, target) tuples
    net = _net()
    calibrate(net, batches, per_neuron=True)
    h1, h2 = _reference_max_inputs(net, [b[0] for b in batches])
    torch.testing.assert_close(net[1].lam.detach(), h1.amax(0).clamp_min(0))
    torch.testing.assert_close(net[3].lam.detach(), h2.amax(0).clamp_min(0))
    hybrid = _net()
    calibrate(hybrid, batches, per_neuron="last")
    assert hybrid[1].lam.shape == () and hybrid[3].lam.shape == (8,)
    assert hybrid[1].per_neuron is False and hybrid[3].per_neuron is True
    torch.testing.assert_close(hybrid[3].lam.detach(), h2.amax(0).clamp_min(0))


def test_calibrated_inference_equals_hard_clip_formula() -> None:
    net = _net(per_neuron_last=True)
    batches = [_x(12, 6, seed=s) * 4 for s in range(2)]
    calibrate(net, batches)  # None: keep each layer's own granularity
    assert net[3].lam.shape == (8,)
    net.eval()
    x = _x(7, 6, seed=5) * 6
    lam1, lam2 = net[1].lam.detach(), net[3].lam.detach()
    clip = lambda h, lam: torch.where((h >= 0) & (h <= lam), h, torch.zeros_like(h))  # noqa: E731
    with torch.no_grad():
        expected = net[4](clip(net[2](clip(net[0](x), lam1)), lam2))
        torch.testing.assert_close(net(x), expected)
    # on the calibration data nothing is clipped: eval output equals the ReLU network's
    relu_net = nn.Sequential(net[0], nn.ReLU(), net[2], nn.ReLU(), net[4])
    with torch.no_grad():
        torch.testing.assert_close(net(batches[0]), relu_net(batches[0]))


def test_gradcheck_float64_train_mode() -> None:
    act = ProAct(num_features=4, per_neuron=True, lam_init=0.8, dtype=torch.float64).train()
    x = (_x(3, 4, seed=1, dtype=torch.float64) * 1.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, lam: act(inp), (x, act.lam), eps=1e-6, atol=1e-5)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="ProAct: num_features is missing"):
        ProAct(per_neuron=True)
    with pytest.raises(ConfigError, match="contains no ProAct module"):
        calibrate(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), [torch.zeros(1, 2)])
    with pytest.raises(ConfigError, match="per_neuron must be None, True, False or 'last'"):
        calibrate(_net(), [torch.zeros(1, 6)], per_neuron="first")
    with pytest.raises(DataError, match="yielded no batch"):
        calibrate(_net(), [])
    with pytest.raises(ConfigError, match="pass forward_fn"):
        calibrate(_net(), [{"x": torch.zeros(1, 6)}])
    branchy = nn.ModuleDict({"used": ProAct(), "unused": ProAct()})
    with pytest.raises(DataError, match=r"\['unused'\] were never called"):
        calibrate(branchy, [torch.zeros(2, 3)], forward_fn=lambda m, b: m["used"](b))
    assert branchy["used"].lam.item() == 6.0  # validate, then mutate: nothing written


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamping_the_sigmoid_argument_changes_no_value(dtype: torch.dtype) -> None:
    """``sigmoid(min(z, 80)) == sigmoid(z)`` bit for bit: both round to 1 from z = 80 on (the clamp only keeps
    ``exp(-z)`` out of the slow subnormal range)."""
    from foundation.layers.proact import _Z_MAX

    z = torch.cat([torch.linspace(-120, 120, 24001, dtype=dtype), torch.tensor([80, 87.5, 1e4, 3e38], dtype=dtype)])
    assert torch.equal(torch.sigmoid(z.clamp(max=_Z_MAX)), torch.sigmoid(z))
    assert torch.equal(torch.compile(lambda t: torch.sigmoid(t.clamp(max=_Z_MAX)))(z), torch.sigmoid(z))
