"""Closed-form, gradient and argument checks for CRReLU, ASH, SELU, Dice and TopKReLU."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers.ash import ASH, HardASH
from foundation.layers.crrelu import CRReLU
from foundation.layers.dice import Dice
from foundation.layers.selu import SELU, SELU_ALPHA, SELU_SCALE, AlphaDropout, lecun_normal_
from foundation.layers.topk import TopKReLU


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- CRReLU -----------------------------------------------------------------------------------------------------

def test_crrelu_closed_form_and_init() -> None:
    act = CRReLU()
    assert act.eps.item() == pytest.approx(0.01)
    with torch.no_grad():
        act.eps.fill_(0.37)
    x = _x(3, 7, 11)
    expected = x.clamp(min=0) + 0.37 * x * torch.exp(-(x**2) / 2)
    torch.testing.assert_close(act(x), expected)


def test_crrelu_eps_gets_gradient() -> None:
    act = CRReLU()
    x = _x(64)
    act(x).sum().backward()
    torch.testing.assert_close(act.eps.grad, (x * torch.exp(-(x**2) / 2)).sum())


# ---- ASH --------------------------------------------------------------------------------------------------------

def test_ash_init_matches_normal_quantile() -> None:
    assert ASH(k=0.1).z_k.item() == pytest.approx(1.2815515655446004, rel=1e-6)
    assert ASH(k=0.3).z_k.item() == pytest.approx(float(norm.ppf(0.7)), rel=1e-6)


def test_ash_soft_closed_form_tokens() -> None:
    act = ASH(k=0.2, alpha=3.0)
    x = _x(2, 5, 16)
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, unbiased=False, keepdim=True)
    expected = x * torch.sigmoid(3.0 * (x - mean - norm.ppf(0.8) * std))
    torch.testing.assert_close(act(x), expected)


def test_ash_soft_stats_over_feature_map_axes() -> None:
    act = ASH(k=0.1, dim=(1, 2, 3))
    x = _x(2, 3, 4, 5)
    flat = x.reshape(2, -1)
    thr = flat.mean(1) + norm.ppf(0.9) * flat.std(1, unbiased=False)
    expected = x * torch.sigmoid(x - thr.view(2, 1, 1, 1))
    torch.testing.assert_close(act(x), expected)


def test_ash_hard_keeps_entries_above_gaussian_threshold() -> None:
    act = HardASH(k=0.1)
    x = _x(4, 4096)
    y = act(x)
    thr = x.mean(-1, keepdim=True) + norm.ppf(0.9) * x.std(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(y, torch.where(x >= thr, x, torch.zeros_like(x)))
    kept = (y != 0).float().mean().item()  # Gaussian input: about the top 10% survive
    assert 0.08 < kept < 0.12


def test_ash_learn_alpha_option() -> None:
    assert isinstance(ASH(learn_alpha=True).alpha, nn.Parameter)
    assert not isinstance(ASH().alpha, nn.Parameter)
    assert isinstance(ASH().z_k, nn.Parameter)


@pytest.mark.parametrize("k", [0.0, 1.0, 1.5, -0.1])
def test_ash_rejects_k_outside_unit_interval(k: float) -> None:
    with pytest.raises(ConfigError, match=r"k .* must lie in \(0, 1\)"):
        ASH(k=k)
    with pytest.raises(ConfigError, match=r"must lie in \(0, 1\)"):
        HardASH(k=k)


# ---- SELU -------------------------------------------------------------------------------------------------------

def test_selu_closed_form() -> None:
    x = _x(1000)
    expected = SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1))
    torch.testing.assert_close(SELU()(x), expected)
    assert SELU_SCALE == pytest.approx(1.0507, abs=1e-4) and SELU_ALPHA == pytest.approx(1.6733, abs=1e-4)


def test_lecun_normal_gives_unit_fan_in_variance_and_self_normalises() -> None:
    torch.manual_seed(0)
    width = 512
    net = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(width, width), SELU())])
    lecun_normal_(net)
    w = net[0].weight
    assert w.std().item() == pytest.approx(1 / math.sqrt(width), rel=0.02)
    assert net[0].bias.abs().max().item() == 0.0
    x = torch.randn(2048, width)
    with torch.no_grad():
        y = net(x)
    # the SNN fixed point: zero mean, unit variance after 8 layers
    assert abs(y.mean().item()) < 0.1
    assert y.var().item() == pytest.approx(1.0, abs=0.15)


def test_lecun_normal_conv_fan_in_and_empty_module_error() -> None:
    torch.manual_seed(0)
    conv = lecun_normal_(nn.Conv2d(16, 64, 3))
    assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(16 * 9), rel=0.05)
    with pytest.raises(ConfigError, match="holds no nn.Linear or nn.Conv"):
        lecun_normal_(SELU())


def test_alpha_dropout_keeps_selu_statistics() -> None:
    torch.manual_seed(0)
    x = torch.randn(200_000)
    y = AlphaDropout(p=0.2).train()(x)
    assert abs(y.mean().item()) < 0.02 and y.var().item() == pytest.approx(1.0, abs=0.03)


# ---- Dice -------------------------------------------------------------------------------------------------------

def test_dice_training_closed_form_and_running_stats() -> None:
    act = Dice(num_features=6)
    with torch.no_grad():
        act.alpha.copy_(torch.linspace(-0.5, 0.5, 6))
    s = _x(4, 5, 6)
    flat = s.reshape(-1, 6)
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    p = torch.sigmoid((s - mean) / torch.sqrt(var + 1e-8))
    torch.testing.assert_close(act(s), s * (p + act.alpha.detach() * (1 - p)))
    torch.testing.assert_close(act.running_mean, 0.1 * mean)
    torch.testing.assert_close(act.running_var, 0.9 + 0.1 * flat.var(0, unbiased=True))


def test_dice_eval_uses_running_stats_on_channel_axis() -> None:
    act = Dice(num_features=3, dim=1).eval()
    with torch.no_grad():
        act.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        act.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
        act.alpha.fill_(0.25)
    s = _x(2, 3, 4, 4)
    rm, rv = act.running_mean.view(1, 3, 1, 1), act.running_var.view(1, 3, 1, 1)
    p = torch.sigmoid((s - rm) / torch.sqrt(rv + 1e-8))
    torch.testing.assert_close(act(s), s * (p + 0.25 * (1 - p)))


def test_dice_alpha_starts_at_zero() -> None:
    assert torch.equal(Dice(num_features=5).alpha.detach(), torch.zeros(5))


def test_dice_argument_errors() -> None:
    with pytest.raises(ConfigError, match="Dice: num_features is missing"):
        Dice()
    with pytest.raises(DataError, match="expected 8 features on axis -1, received 6"):
        Dice(num_features=8)(_x(2, 6))


# ---- Top-k ReLU -------------------------------------------------------------------------------------------------

def test_topk_keeps_exactly_k_largest_per_token() -> None:
    h = _x(3, 7, 64) + 3.0  # almost all positive, so every token has more than k positives
    y = TopKReLU(k=5)(h)
    assert ((y != 0).sum(-1) == 5).all()
    kth = h.topk(5, dim=-1).values[..., -1:]
    torch.testing.assert_close(y, torch.where(h >= kth, h, torch.zeros_like(h)))


def test_topk_fraction_rounds_up_and_channel_axis() -> None:
    act = TopKReLU(k=0.1, dim=1)
    assert act.num_kept(64) == 7
    h = _x(2, 64, 3, 3) + 3.0
    assert ((act(h) != 0).sum(1) == 7).all()


def test_topk_zeroes_negatives() -> None:
    h = -torch.rand(2, 16) - 0.1
    h[:, 0] = 1.0
    y = TopKReLU(k=4)(h)
    assert ((y != 0).sum(-1) == 1).all() and (y >= 0).all()


@pytest.mark.parametrize("k", [0.0, 1.0, 1.5, -0.2])
def test_topk_rejects_fraction_outside_unit_interval(k: float) -> None:
    with pytest.raises(ConfigError, match=r"outside \(0, 1\)"):
        TopKReLU(k=k)


def test_topk_count_errors() -> None:
    with pytest.raises(ConfigError, match="count k=0 must be >= 1"):
        TopKReLU(k=0)
    with pytest.raises(DataError, match="k=9 exceeds the 8 features"):
        TopKReLU(k=9)(_x(2, 8))


# ---- gradcheck --------------------------------------------------------------------------------------------------

def _gradcheck_layers() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    dice = Dice(num_features=4, dtype=torch.float64)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.2, 0.3, 0.5]))
    return [
        ("crrelu", CRReLU(dtype=torch.float64), (3, 4)),
        ("ash", ASH(k=0.2, learn_alpha=True, dtype=torch.float64), (3, 6)),
        ("ash-hard", HardASH(k=0.2), (3, 6)),
        ("selu", SELU(), (3, 4)),
        ("dice-train", dice, (5, 4)),
        ("dice-eval", Dice(num_features=4, dtype=torch.float64).eval(), (5, 4)),
        ("topk", TopKReLU(k=2), (3, 6)),
    ]


@pytest.mark.parametrize("name,layer,shape", _gradcheck_layers(), ids=lambda v: v if isinstance(v, str) else "")
def test_gradcheck_float64(name: str, layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = _x(*shape, seed=3, dtype=torch.float64).requires_grad_(True)
    params = tuple(p for p in layer.parameters())
    if name == "dice-train":  # running stats change every call; gradcheck calls many times
        layer.momentum = 0.0
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x, *params), eps=1e-6, atol=1e-5)


def test_crrelu_hand_written_gradient_matches_autograd_and_double_backward() -> None:
    act = CRReLU(dtype=torch.float64)
    with torch.no_grad():
        act.eps.fill_(0.3)
    x = _x(50, dtype=torch.float64).requires_grad_(True)
    gx, geps = torch.autograd.grad(act(x).sum(), (x, act.eps))
    x2 = x.detach().requires_grad_(True)
    eps2 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    ref = torch.relu(x2) + eps2 * x2 * torch.exp(-(x2**2) / 2)
    rx, reps = torch.autograd.grad(ref.sum(), (x2, eps2))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(geps, reps)
    assert torch.autograd.gradgradcheck(lambda inp, e: act(inp), (x[:5].detach().requires_grad_(True), act.eps))
