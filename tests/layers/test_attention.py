"""Attention layer: dense vs timm, padded with a key-padding mask, packed, 8-bit storage, LoRA names, errors."""
from __future__ import annotations

import pytest
import timm.layers
import torch
import torch.nn.functional as F

from foundation.errors import ConfigError
from foundation.kernels import pack_visible
from foundation.layers.attention import Attention


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(dim: int = 32, heads: int = 4):
    torch.manual_seed(0)
    ours = Attention(dim, heads, dtype=torch.float64)
    ref = timm.layers.Attention(dim, heads, qkv_bias=True, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict(), strict=True)  # same parameter names as timm
    return ours, ref


def test_dense_matches_timm_attention_forward_and_backward():
    ours, ref = _pair()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.qkv.weight.grad, ref.qkv.weight.grad)
    torch.testing.assert_close(ours.proj.bias.grad, ref.proj.bias.grad)


def test_key_padding_mask_matches_masked_sdpa_and_zeroes_padding():
    ours, _ = _pair()
    x = torch.randn(3, 9, 32, dtype=torch.float64)
    mask = torch.rand(3, 9, generator=torch.Generator().manual_seed(1)) > 0.4  # True = real token
    mask[:, 0] = True
    out = ours(x, key_padding_mask=mask)
    qkv = ours.qkv(x).reshape(3, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)  # [B, N, 3D] -> [3, B, H, N, Dh]
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask[:, None, None, :])
    expected = ours.proj(o.transpose(1, 2).reshape(3, 9, 32))  # [B, H, N, Dh] -> [B, N, D]
    torch.testing.assert_close(out[mask], expected[mask])
    assert float(out.detach()[~mask].abs().sum()) == 0.0


def test_packed_input_equals_dense_attention_on_each_sample():
    ours, _ = _pair()
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    keep = [torch.tensor([7, 1, 2]), torch.tensor([0, 3, 4, 5, 6])]  # indices of visible tokens
    packed, cu, longest = pack_visible(x, keep)
    out = ours(packed, cu_seqlens=cu, max_seqlen=longest)
    out_default_max = ours(packed, cu_seqlens=cu)
    assert out.shape == (8, 32)
    torch.testing.assert_close(out, out_default_max)
    for b, idx in enumerate(keep):
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], ours(x[b : b + 1, idx])[0])


@pytest.mark.parametrize("packed", [False, True])
def test_act_bits_8_keeps_the_forward_and_approximates_the_gradient(packed):
    torch.manual_seed(2)
    full = Attention(32, 4)
    eight = Attention(32, 4, act_bits=8)
    eight.load_state_dict(full.state_dict())
    x = torch.randn(2, 10, 32)
    args = {}
    if packed:
        x, cu, longest = pack_visible(x, torch.ones(2, 10, dtype=torch.bool))
        args = {"cu_seqlens": cu, "max_seqlen": longest}
    y_full, y_eight = full(x, **args), eight(x, **args)
    torch.testing.assert_close(y_eight, y_full)
    g = torch.randn_like(y_full)
    y_full.backward(g)
    y_eight.backward(g)
    for name in ("qkv.weight", "proj.weight"):
        a, b = full.get_parameter(name).grad, eight.get_parameter(name).grad
        assert float((a - b).norm() / a.norm()) < 0.03, name


def test_attention_dropout_only_in_training():
    torch.manual_seed(3)
    attn = Attention(16, 2, attn_drop=0.5)
    x = torch.randn(6, 16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    attn.eval()
    no_drop = Attention(16, 2).eval()
    no_drop.load_state_dict(attn.state_dict())
    torch.testing.assert_close(attn(x, cu_seqlens=cu), no_drop(x, cu_seqlens=cu))
    attn.train()
    assert not torch.allclose(attn(x, cu_seqlens=cu), no_drop(x, cu_seqlens=cu))


def test_lora_targets_qkv_and_proj_by_name():
    peft = pytest.importorskip("peft")
    model = torch.nn.Sequential(Attention(16, 2))
    x = torch.randn(1, 4, 16)
    before = model(x).detach()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["qkv", "proj"]))
    wrapped = [n for n, m in lora.named_modules() if n.endswith(("qkv", "proj")) and hasattr(m, "lora_A")]
    assert len(wrapped) == 2
    torch.testing.assert_close(lora(x), before)  # LoRA B starts at zero: identity at step 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 30, "num_heads": 4}, "dim = 30 must be divisible by num_heads = 4"),
        ({"dim": 32, "attn_drop": 1.0}, r"attn_drop must be in \[0, 1\), received 1.0"),
        ({"dim": 32, "backend": "cuda"}, "unknown backend 'cuda'"),
        ({"dim": 32, "backend": "triton", "attn_drop": 0.1}, "backend='triton' has no attention dropout"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Attention(**kwargs)


def test_bad_forward_layouts():
    attn = Attention(16, 2)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ConfigError, match="x has width 8 but the layer was built with dim = 16"):
        attn(torch.randn(2, 3, 8))
    with pytest.raises(ConfigError, match=r"x must be \[B, N, D\] \(or packed \[K, D\] with cu_seqlens\)"):
        attn(torch.randn(4, 16))
    with pytest.raises(ConfigError, match=r"with cu_seqlens x must be packed \[K, D\]"):
        attn(torch.randn(1, 4, 16), cu_seqlens=cu)
    with pytest.raises(ConfigError, match="either cu_seqlens .* or key_padding_mask"):
        attn(torch.randn(4, 16), cu_seqlens=cu, key_padding_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"key_padding_mask must be bool \[B, N\] = \[2, 3\]"):
        attn(torch.randn(2, 3, 16), key_padding_mask=torch.ones(2, 3))
