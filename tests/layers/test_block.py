"""Transformer Block: formula, packed vs dense, names from config, drop-path, peft LoRA."""
from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn

from foundation.errors import ConfigError
from foundation.layers.attention import Attention
from foundation.layers.block import Block, BlockConfig, drop_path
from foundation.layers.karat import KArAt
from foundation.layers.mlp import KANMlp, Mlp
from foundation.registry import MLPS

SMALL = {"noble": {"rank": 2}, "kan": {"grid_size": 3}, "skan": {"grid_size": 2}, "afkan": {"grid_size": 2}}


def _block(**kw) -> Block:
    torch.manual_seed(0)
    return Block(8, num_heads=2, mlp_ratio=2.0, **kw).double()


def test_forward_is_the_pre_norm_formula() -> None:
    b = _block()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = x + b.attn(b.norm1(x))
    torch.testing.assert_close(b(x), h + b.mlp(b.norm2(h)))


@pytest.mark.parametrize("attention", ["softmax", "karat"])
@pytest.mark.parametrize("mlp", MLPS.names())
def test_packed_equals_dense(attention: str, mlp: str) -> None:
    attn_kwargs = {"max_tokens": 5, "rank": 3} if attention == "karat" else {}
    b = _block(attention=attention, mlp=mlp, activation="silu", attn_kwargs=attn_kwargs, mlp_kwargs=SMALL.get(mlp))
    b.eval()
    xs = [torch.randn(n, 8, dtype=torch.float64) for n in (3, 5, 1)]
    cu = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
    y = b(torch.cat(xs), cu_seqlens=cu, max_seqlen=5)
    for i, xi in enumerate(xs):
        torch.testing.assert_close(y[cu[i] : cu[i + 1]], b(xi[None])[0])


@pytest.mark.parametrize("attention,mlp", [("softmax", "mlp"), ("karat", "noble"), ("softmax", "kan")])
def test_gradcheck(attention: str, mlp: str) -> None:
    attn_kwargs = {"max_tokens": 3, "rank": 2} if attention == "karat" else {}
    b = _block(attention=attention, mlp=mlp, activation="silu", attn_kwargs=attn_kwargs, mlp_kwargs=SMALL.get(mlp))
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(b, (x,), fast_mode=True)


def test_names_from_config() -> None:
    cfg = BlockConfig(dim=8, num_heads=2, attention="karat", mlp="kan", activation="silu", attn_kwargs={"max_tokens": 4})
    b = Block.from_config(cfg)
    assert isinstance(b.attn, KArAt) and b.attn.max_tokens == 4
    assert isinstance(b.mlp, KANMlp) and b.mlp.fc1.out_features == 32 and isinstance(b.mlp.fc1.act, nn.SiLU)
    b = Block.from_config(BlockConfig(dim=8, num_heads=2))
    assert isinstance(b.attn, Attention) and isinstance(b.mlp, Mlp) and isinstance(b.mlp.act, nn.GELU)


def test_bad_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown attention 'sofmax'; did you mean 'softmax'\? valid: karat, softmax"):
        Block(8, 2, attention="sofmax")
    with pytest.raises(ConfigError, match=r"BlockConfig.attention: unknown attention 'krat'"):
        BlockConfig(attention="krat")
    with pytest.raises(ConfigError, match=r"Block mlp: unknown mlp 'kann'; did you mean 'kan'"):
        Block(8, 2, mlp="kann")
    with pytest.raises(ConfigError, match=r"unknown activation 'gleu'"):
        Block(8, 2, activation="gleu")
    with pytest.raises(ConfigError, match=r"attention 'softmax' does not take \['max_tokens'\]"):
        Block(8, 2, attn_kwargs={"max_tokens": 4})


def test_drop_path_drops_whole_samples() -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 3, 2)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert 0.6 < (per_sample[:, 0] > 0).float().mean() < 0.9
    cu = torch.tensor([0, 2, 7, 8, 12], dtype=torch.int32)
    yp = drop_path(torch.ones(12, 4), 0.5, training=True, cu_seqlens=cu)
    for i in range(4):
        seg = yp[cu[i] : cu[i + 1]]
        assert (seg == seg[0, 0]).all() and seg[0, 0] in (0.0, 2.0)
    assert drop_path(x, 0.25, training=False) is x


def test_block_drop_path_in_training_only() -> None:
    b = _block(drop_path=0.5)
    x = torch.randn(64, 3, 8, dtype=torch.float64)
    b.eval()
    ref = b(x)
    b.train()
    torch.manual_seed(1)
    assert not torch.allclose(b(x), ref)


@pytest.mark.parametrize(
    "attention,mlp,targets",
    [
        ("softmax", "mlp", ["qkv", "proj", "fc1", "fc2"]),
        ("softmax", "noble", ["qkv", "proj", "fc1", "fc2"]),
        ("karat", "kan", ["qkv", "proj", "attn_down", "attn_up", "base", "spline"]),
        ("softmax", "afkan", ["qkv", "proj", "linear"]),
    ],
)
def test_peft_lora_wraps_every_linear_by_name(attention: str, mlp: str, targets: list[str]) -> None:
    attn_kwargs = {"max_tokens": 6} if attention == "karat" else {}
    b = _block(attention=attention, mlp=mlp, attn_kwargs=attn_kwargs, mlp_kwargs=SMALL.get(mlp)).float()
    x = torch.randn(2, 6, 8)
    before = b(x).detach()
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets)
    b = peft.inject_adapter_in_model(cfg, b)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in b.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped == set(targets)
    torch.testing.assert_close(b(x), before)  # LoRA B starts at zero: identity at step 0


@pytest.mark.parametrize("attention", ["softmax", "karat"])
@pytest.mark.parametrize("mlp", ["mlp", "noble", "kan"])
def test_every_weight_matrix_lives_in_a_linear(attention: str, mlp: str) -> None:
    attn_kwargs = {"max_tokens": 6} if attention == "karat" else {}
    b = _block(attention=attention, mlp=mlp, attn_kwargs=attn_kwargs, mlp_kwargs=SMALL.get(mlp))
    in_linear = {id(p) for m in b.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    outside = [n for n, p in b.named_parameters() if p.ndim >= 2 and id(p) not in in_linear]
    assert outside == []
