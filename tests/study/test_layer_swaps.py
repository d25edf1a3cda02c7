"""The recipe fields the layer study swaps: each override really changes the modules of the shipped models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.layers.create_act import get_act_layer
from foundation.layers.karat import KArAt
from foundation.layers.mlp import KANMlp
from foundation.layers.noble import NobleLinear
from foundation.pretrain.components import build_model

ENCODER_MLPS = {"deeperbrain-tiny": "blocks", "slim-brain-tiny": "encoder.blocks"}


def _encoder_blocks(model: nn.Module, recipe: str) -> list[nn.Module]:
    return list(model.get_submodule(ENCODER_MLPS[recipe]))


@pytest.mark.parametrize("recipe", list(ENCODER_MLPS))
@pytest.mark.parametrize("act", ["crrelu", "ash", "selu", "dice", "proact", "topk-relu"])
def test_activation_override_reaches_every_encoder_mlp(recipe, act):
    model = build_model(load_recipe(recipe, [f"model.activation={act}"]))
    cls = get_act_layer(act)
    blocks = _encoder_blocks(model, recipe)
    assert blocks and all(type(b.mlp.act) is cls for b in blocks)
    assert not any(isinstance(m, nn.GELU) for m in model.modules())  # the baseline's activation is gone everywhere


@pytest.mark.parametrize("recipe", list(ENCODER_MLPS))
@pytest.mark.parametrize("kind", ["kan", "skan", "afkan"])
def test_kan_override_replaces_every_encoder_mlp(recipe, kind):
    model = build_model(load_recipe(recipe, [f"model.mlp={kind}"]))
    layer = {"kan": "KANLinear", "skan": "SKANLinear", "afkan": "AFKANLinear"}[kind]
    for b in _encoder_blocks(model, recipe):
        assert isinstance(b.mlp, KANMlp)
        assert {type(m).__name__ for m in b.mlp.modules()} >= {layer}


@pytest.mark.parametrize("recipe", list(ENCODER_MLPS))
def test_noble_on_mlp_and_attention_with_the_recipe_rank(recipe):
    plain = build_model(load_recipe(recipe, ["model.mlp=noble", "model.noble_rank=8"]))
    both = build_model(load_recipe(recipe, ["model.mlp=noble", "model.noble_rank=8", "model.noble_attention=true"]))
    for b in _encoder_blocks(plain, recipe):
        assert isinstance(b.mlp.fc1, NobleLinear) and isinstance(b.mlp.fc2, NobleLinear) and b.mlp.fc1.rank == 8
        assert type(b.attn.qkv) is nn.Linear and type(b.attn.proj) is nn.Linear
    for b in _encoder_blocks(both, recipe):
        assert isinstance(b.attn.qkv, NobleLinear) and isinstance(b.attn.proj, NobleLinear) and b.attn.qkv.rank == 8
        if hasattr(b, "proj"):  # Hiera's width-changing residual projection is not an attention linear
            assert type(b.proj) is nn.Linear
    extra = sum(p.numel() for p in both.parameters()) - sum(p.numel() for p in plain.parameters())
    # each noble attention linear adds down [r, D_in] + mid [r, r] + b_mid [r] + up [D_out, r] + w1, p1, w2, p2 [r]
    expect = sum(8 * (m.in_features + 8 + 1 + m.out_features + 4) for b in _encoder_blocks(both, recipe)
                 for m in (b.attn.qkv, b.attn.proj))
    if recipe == "slim-brain-tiny":
        expect *= 2  # the EMA target encoder is a copy of the context encoder
    assert extra == expect


def test_karat_attention_in_deeperbrain_encoder_only():
    model = build_model(load_recipe("deeperbrain-tiny", ["model.attention=karat", "model.karat_max_tokens=128"]))
    assert all(isinstance(b.attn, KArAt) and b.attn.max_tokens == 128 for b in model.blocks)
    assert not any(isinstance(b.attn, KArAt) for b in model.decoder_blocks)
    x = torch.randn(2, 4, 400)
    pos = torch.randn(2, 4, 3) * 0.05
    feats = model.pooled_features(x, pos, torch.ones(2, 4, dtype=torch.bool))
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()


@pytest.mark.parametrize("override, message", [
    ("model.attention=sofmax", "model.attention"),
    ("model.noble_rank=0", "noble_rank"),
])
def test_bad_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("deeperbrain-tiny", [override])
    if "noble" in override:
        with pytest.raises(ConfigError, match=message):
            load_recipe("slim-brain-tiny", [override])
