"""Target presets resolve to the right modules of timm ViT / ConvNeXt / EfficientNet, before any mutation."""
from __future__ import annotations

import re

import pytest
import timm
from torch import nn

from foundation.adapters.targets import TARGET_PRESETS, match_name, resolve_targets
from foundation.errors import ConfigError
from tests.adapters._helpers import ToyConvNet


@pytest.fixture(scope="module")
def models():
    return {n: timm.create_model(f"test_{n}", pretrained=False, num_classes=3)
            for n in ("vit", "convnext", "efficientnet")}


def _expected(model: nn.Module, keep) -> list[str]:
    return [n for n, m in model.named_modules() if n and keep(n, m)]


def test_match_name_is_dotted_suffix_or_full_regex():
    assert match_name("blocks.0.attn.qkv", ("attn.qkv",))
    assert not match_name("blocks.0.xattn.qkv", ("attn.qkv",))
    assert match_name("blocks.0.attn.qkv", r"blocks\.\d+\.attn\.qkv")
    assert not match_name("blocks.0.attn.qkv", r"attn\.qkv")  # a regex matches the whole name


@pytest.mark.parametrize("preset,suffixes", [
    ("attention", ("attn.qkv", "attn.proj")),
    ("attention-mlp", ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")),
    ("mlp", ("mlp.fc1", "mlp.fc2")),
])
def test_vit_name_presets(models, preset, suffixes):
    got = resolve_targets(models["vit"], preset)
    assert got == [f"blocks.{i}.{s}" for i in range(6) for s in suffixes]  # test_vit has 6 blocks


def test_all_linear_excludes_the_timm_classifier(models):
    vit = models["vit"]
    got = resolve_targets(vit, "all-linear")
    assert "head" not in got
    assert got == _expected(vit, lambda n, m: isinstance(m, nn.Linear) and n != "head")


def test_convnext_mlp_and_efficientnet_pointwise(models):
    convnext, effnet = models["convnext"], models["efficientnet"]
    assert resolve_targets(convnext, "mlp") == _expected(convnext, lambda n, m: re.search(r"mlp\.fc[12]$", n))
    pw = resolve_targets(effnet, "pointwise")
    assert pw == _expected(effnet, lambda n, m: isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)
    assert any(n.endswith("conv_pw") for n in pw) and any(n.endswith("conv_pwl") for n in pw)
    assert not any(n.endswith("conv_dw") for n in pw)
    assert "classifier" not in resolve_targets(effnet, "all-linear")


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown preset 'atention'; did you mean 'attention'"):
        resolve_targets(ToyConvNet(), "atention")
    assert set(TARGET_PRESETS) == {"attention", "attention-mlp", "mlp", "pointwise", "all-linear",
                                   "labram", "cbramod", "biot", "bendr"}  # the published EEG architectures


def test_no_match_repeats_the_patterns_and_grouped_conv_is_refused():
    with pytest.raises(ConfigError, match=r"preset 'attention' \(attn.qkv, attn.proj\) matched no module"):
        resolve_targets(ToyConvNet(), "attention")
    with pytest.raises(ConfigError, match=r"'conv_dw' is a grouped Conv2d \(groups=16\).*exclude_modules"):
        resolve_targets(ToyConvNet(), None, ("conv_pw", "conv_dw"))
    with pytest.raises(ConfigError, match=r"preset and target_modules are both empty"):
        resolve_targets(ToyConvNet(), None, ())


def test_a_mistyped_target_suggests_the_close_module_names():
    from torch import nn

    from foundation.adapters.targets import resolve_targets
    from foundation.errors import ConfigError

    model = nn.Sequential()
    model.add_module("mlp", nn.Sequential())
    model.mlp.add_module("fc1", nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"did you mean 'mlp.fc1'"):
        resolve_targets(model, None, ("mlp.fc_1",))
