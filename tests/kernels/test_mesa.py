"""Mesa 8-bit activation storage: exact error bounds, a small transformer, a 200-step training run."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.kernels import apply_act_bits, softmax_8bit
from foundation.kernels.mesa import GELU8, LayerNorm8, Linear8, Softmax8
from foundation.layers.attention import Attention


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def tiny_model(dim: int = 32, depth: int = 2, classes: int = 4) -> nn.Module:
    return nn.Sequential(*[TinyBlock(dim, 4) for _ in range(depth)], nn.LayerNorm(dim), nn.Linear(dim, classes))


def saved_bytes(fn, model: nn.Module) -> int:
    """Bytes of the distinct storages autograd saves for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_linear_weight_gradient_error_is_within_the_quantisation_bound():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    lin8 = copy.deepcopy(lin)
    apply_act_bits(lin8, 8)
    x, g = torch.randn(32, 16), torch.randn(32, 8)
    lin(x).backward(g)
    lin8(x).backward(g)
    half_step = float(x.abs().max()) / 127 / 2  # first batch: scale = max|x|, rounding error <= scale / 254
    bound = g.abs().T @ torch.full_like(x, half_step) + 1e-6
    assert bool(((lin8.weight.grad - lin.weight.grad).abs() <= bound).all())
    assert float((lin8.weight.grad - lin.weight.grad).abs().max()) > 0  # it really used the 8-bit copy
    torch.testing.assert_close(lin8.bias.grad, lin.bias.grad)


def test_softmax_per_head_scales_store_uint8_and_bound_the_gradient():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 5) * torch.tensor([0.1, 1.0, 8.0]).view(1, 3, 1, 1)  # heads of very different sharpness
    g = torch.randn(2, 3, 5, 5)
    x8 = x.clone().requires_grad_(True)
    dtypes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: dtypes.append(t.dtype) or t, lambda t: t):
        y8 = softmax_8bit(x8, -1)
    assert torch.uint8 in dtypes and torch.float32 not in [d for d in dtypes if d != torch.float32] + [None]
    xf = x.clone().requires_grad_(True)
    y = torch.softmax(xf, -1)
    torch.testing.assert_close(y8, y)
    (gx8,) = torch.autograd.grad(y8, x8, g)
    (gx,) = torch.autograd.grad(y, xf, g)
    # |p8 - p| <= max_head(p) / 510; the gradient p * (g - sum g p) is Lipschitz in p with constant <= 3 max|g|
    head_max = y.detach().amax(dim=(0, 2, 3), keepdim=True)
    bound = 3 * float(g.abs().max()) * 5 * head_max / 510 + 1e-6
    assert bool(((gx8 - gx).abs() <= bound).all())


@pytest.mark.parametrize("make", [lambda: nn.GELU(), lambda: nn.GELU(approximate="tanh"), lambda: nn.SiLU(),
                                  lambda: nn.LayerNorm(24)])
def test_elementwise_and_layernorm_gradients_close_to_full_precision(make):
    torch.manual_seed(2)
    ref, mod = make(), make()
    mod.load_state_dict(ref.state_dict())
    apply_act_bits(mod, 8)
    x, g = torch.randn(64, 24) * 3, torch.randn(64, 24)
    xr, x8 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, y8 = ref(xr), mod(x8)
    torch.testing.assert_close(y8, yr)  # the forward is computed in full precision
    yr.backward(g)
    y8.backward(g)
    rel = float((x8.grad - xr.grad).norm() / xr.grad.norm())
    assert 0 < rel < 0.02


def test_small_transformer_gradients_within_5_percent_and_fewer_saved_bytes():
    torch.manual_seed(3)
    model = tiny_model()
    model8 = copy.deepcopy(model)
    names = apply_act_bits(model8, 8)
    assert {"0.attn", "0.attn.qkv", "0.mlp.1", "0.norm1"} <= set(names)
    assert model8.state_dict().keys() == model.state_dict().keys()
    x, y = torch.randn(4, 16, 32), torch.randint(0, 4, (4, 16))

    def loss_of(m):
        return nn.functional.cross_entropy(m(x).reshape(-1, 4), y.reshape(-1))

    full_bytes = saved_bytes(lambda: loss_of(model), model)
    small_bytes = saved_bytes(lambda: loss_of(model8), model8)
    assert small_bytes < 0.4 * full_bytes
    loss_of(model).backward()
    loss_of(model8).backward()
    for (name, p), (_, p8) in zip(model.named_parameters(), model8.named_parameters()):
        rel = float((p8.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
        assert rel < 0.05, f"{name}: relative gradient error {rel:.3g}"


def _train(model: nn.Module, steps: int = 200) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, 32, generator=gen)
    y = (x[..., :4].sum(-1) > 0).long() + 2 * (x[..., 4:8].sum(-1) > 0).long()  # 4 classes, learnable
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        idx = torch.arange(16) + 16 * (step % 4)
        loss = nn.functional.cross_entropy(model(x[idx]).reshape(-1, 4), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return sum(losses[-20:]) / 20


def test_200_step_training_reaches_the_full_precision_loss_within_2_percent():
    torch.manual_seed(4)
    model = tiny_model()
    model8 = copy.deepcopy(model)
    apply_act_bits(model8, 8)
    full, eight = _train(model), _train(model8)
    assert full < 0.5  # it did learn (chance is ln 4 = 1.39)
    assert abs(eight - full) <= 0.02 * full, f"8-bit final loss {eight:.4f} vs full precision {full:.4f}"


def test_apply_act_bits_round_trip_and_bad_input():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Softmax(dim=-1), nn.LayerNorm(4), nn.SiLU())
    apply_act_bits(model, 8)
    assert [type(m) for m in model][:4] == [Linear8, GELU8, Softmax8, LayerNorm8]
    assert apply_act_bits(model, 8) == []  # already 8-bit: nothing to do
    apply_act_bits(model, None)
    assert [type(m) for m in model] == [nn.Linear, nn.GELU, nn.Softmax, nn.LayerNorm, nn.SiLU]
    assert not any(name.startswith("act_scale") for name, _ in model.named_buffers())
    with pytest.raises(ConfigError, match=r"recipe key memory.act_bits\): expected None, 0 or 8, received 4"):
        apply_act_bits(model, 4)
    bad = nn.Sequential(nn.Linear(4, 4), nn.Softmax())
    with pytest.raises(ConfigError, match=r"softmax module 1 has dim=None"):
        apply_act_bits(bad, 8)
    assert type(bad[0]) is nn.Linear  # validated before mutating: nothing changed


def test_attention_act_bits_argument():
    attn = Attention(16, 2, act_bits=8)
    assert type(attn.qkv) is Linear8 and type(attn.proj) is Linear8 and isinstance(attn.qkv, nn.Linear)
    assert attn.act_bits == 8
    apply_act_bits(attn, None)
    assert attn.act_bits is None and type(attn.qkv) is nn.Linear
    with pytest.raises(ConfigError, match="expected None, 0 or 8, received 16"):
        Attention(16, 2, act_bits=16)


def test_dense_core_backward_equals_autograd_of_sdpa() -> None:
    from foundation.kernels.mesa import _dense_core_backward

    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    ref = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.37), (q, k, v), g)
    mine = _dense_core_backward(q.detach(), k.detach(), v.detach(), g, 0.37)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_packed_8bit_core_gradient_is_the_varlen_gradient_at_the_dequantised_inputs(backend: str) -> None:
    from foundation.kernels import attention_core_8bit, varlen_attention
    from foundation.kernels.mesa import _absmax, _dequantize, _quantize

    torch.manual_seed(4)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    q, k, v = (torch.randn(20, 2, 8, requires_grad=True) for _ in range(3))
    g = torch.randn(20, 2, 8)
    out = attention_core_8bit(q, k, v, None, cu, 13, backend)
    torch.testing.assert_close(out, varlen_attention(q, k, v, cu, 13, backend=backend), rtol=0, atol=0)
    mine = torch.autograd.grad(out, (q, k, v), g)
    # the reference: autograd of the full-precision core at the int8 round trip of q, k, v
    deq = []
    for t in (q, k, v):
        scale = _absmax(t.detach(), (0, 2)).float().clamp_min(1e-12)
        deq.append(_dequantize(_quantize(t.detach(), scale), scale, t.dtype).requires_grad_(True))
    ref = torch.autograd.grad(varlen_attention(*deq, cu, 13, backend="reference"), deq, g)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    full = torch.autograd.grad(varlen_attention(q, k, v, cu, 13, backend=backend), (q, k, v), g)
    assert float((mine[0] - full[0]).abs().max()) > 0  # it really recomputed from the 8-bit copies


@pytest.mark.slow
def test_8bit_attention_compiles_forward_and_backward_equal_to_eager() -> None:
    torch.manual_seed(5)
    attn = Attention(32, 4, act_bits=8).train()
    x = torch.randn(2, 9, 32, requires_grad=True)
    attn(x).square().sum().backward()
    eager = x.grad.clone()
    x.grad = None
    torch.compile(attn)(x).square().sum().backward()
    torch.testing.assert_close(x.grad, eager, rtol=1e-5, atol=1e-6)
