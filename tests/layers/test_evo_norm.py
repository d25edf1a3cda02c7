"""EvoNorm-B0 / S0 against timm's EvoNorm2dB0 / EvoNorm2dS0 and against the formulas on other layouts."""
from __future__ import annotations

import pytest
import torch
from timm.layers.evo_norm import EvoNorm2dB0, EvoNorm2dS0

from foundation.errors import ConfigError, DataError
from foundation.layers.evo_norm import EvoNormB0, EvoNormS0


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 + 0.5


def _randomise(ours: torch.nn.Module, theirs: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 1.0)
            dict(ours.named_parameters())[name].copy_(p)


def test_b0_matches_timm_train_then_eval() -> None:
    ours, theirs = EvoNormB0(8, dim=1), EvoNorm2dB0(8)
    _randomise(ours, theirs)
    for step in range(3):
        x = _x(4, 8, 5, 6, seed=step)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # bit-identical
        torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    x = _x(3, 8, 7, 7, seed=9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # bit-identical


def test_s0_matches_timm_train_and_eval() -> None:
    ours, theirs = EvoNormS0(64, dim=1), EvoNorm2dS0(64)
    assert ours.groups == theirs.groups == 32
    _randomise(ours, theirs)
    x = _x(2, 64, 5, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # bit-identical
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # bit-identical
    ours16, theirs16 = EvoNormS0(64, group_size=16, dim=1), EvoNorm2dS0(64, group_size=16)
    _randomise(ours16, theirs16)
    torch.testing.assert_close(ours16(x), theirs16(x), rtol=0, atol=0)


def test_b0_and_s0_gradients_match_timm() -> None:
    for ours, theirs in ((EvoNormB0(8, dim=1), EvoNorm2dB0(8)), (EvoNormS0(8, groups=4, dim=1), EvoNorm2dS0(8, 4))):
        _randomise(ours, theirs)
        x1 = _x(2, 8, 3, 3).requires_grad_(True)
        x2 = x1.detach().clone().requires_grad_(True)
        (ours(x1) ** 2).sum().backward()
        (theirs(x2) ** 2).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize("shape", [(2, 8, 10), (2, 8, 3, 4, 5)])
def test_feature_maps_1d_3d_equal_flattened_2d_timm(shape: tuple[int, ...]) -> None:
    """A [B, C, L] or [B, C, D, H, W] map has the same statistics as the same values laid out as [B, C, L, 1]."""
    x = _x(*shape)
    flat = x.reshape(shape[0], shape[1], -1, 1)
    for ours, theirs in ((EvoNormB0(8, dim=1), EvoNorm2dB0(8)), (EvoNormS0(8, groups=2, dim=1), EvoNorm2dS0(8, 2))):
        _randomise(ours, theirs)
        torch.testing.assert_close(ours(x), theirs(flat).reshape(shape))


def test_tokens_b0_closed_form() -> None:
    """Tokens [B, N, C]: batch variance over (B, N), instance variance over N per sample and channel."""
    layer = EvoNormB0(6)  # dim=-1
    _randomise(layer, EvoNorm2dB0(6))
    w, b, v = (p.detach() for p in (layer.weight, layer.bias, layer.v))
    x = _x(3, 5, 6)
    bvar = x.reshape(-1, 6).var(0, unbiased=False)
    ivar = x.var(1, unbiased=False, keepdim=True)
    den = torch.maximum(torch.sqrt(bvar + 1e-3).expand_as(x), v * x + torch.sqrt(ivar + 1e-3))
    torch.testing.assert_close(layer(x), x / den * w + b)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * x.reshape(-1, 6).var(0, unbiased=True))


def test_tokens_s0_closed_form() -> None:
    layer = EvoNormS0(6, groups=2)
    x = _x(3, 5, 6)
    g = x.reshape(3, 5, 2, 3)  # [B, N, C] -> [B, N, G, C/G]
    std = torch.sqrt(g.var(dim=(1, 3), unbiased=False, keepdim=True) + 1e-5).expand_as(g).reshape(3, 5, 6)
    torch.testing.assert_close(layer(x), x * torch.sigmoid(x) / std)


def test_bf16_input_keeps_dtype_and_is_close_to_float32() -> None:
    for layer in (EvoNormB0(16, dim=1), EvoNormS0(16, groups=4, dim=1)):
        x = _x(2, 16, 4, 4)
        ref = layer(x)
        out = layer(x.bfloat16())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    "make", [lambda: EvoNormB0(4, dtype=torch.float64), lambda: EvoNormS0(4, groups=2, dtype=torch.float64)]
)
def test_gradcheck_float64(make) -> None:
    layer = make()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.linspace(-0.3, 0.3, p.numel(), dtype=p.dtype))
    if hasattr(layer, "momentum"):
        layer.momentum = 0.0  # running variance stays fixed across gradcheck's repeated calls
    x = _x(3, 5, 4, seed=2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x, *layer.parameters()), eps=1e-6, atol=1e-5)


def test_errors() -> None:
    with pytest.raises(ConfigError, match=r"groups=32 must divide num_features=48; valid group counts .*16, 24"):
        EvoNormS0(48)
    with pytest.raises(ConfigError, match="group_size=5 must divide num_features=16"):
        EvoNormS0(16, group_size=5)
    with pytest.raises(ConfigError, match="give groups or group_size, not both"):
        EvoNormS0(16, groups=4, group_size=4)
    with pytest.raises(ConfigError, match="EvoNormB0: num_features is missing"):
        EvoNormB0()
    with pytest.raises(DataError, match="expected 8 features on axis 1, received 4"):
        EvoNormB0(8, dim=1)(_x(2, 4, 3, 3))
    with pytest.raises(DataError, match="more than one value per channel"):
        EvoNormB0(4, dim=1)(_x(1, 4))
