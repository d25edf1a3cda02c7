"""`foundation finetune` methods end to end on the toy model: probes, full (LLRD), LoRA, Dopamine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundation.config import load_recipe
from foundation.errors import CheckpointError, ConfigError
from foundation.finetune.runner import FinetuneOptions, run_finetune
from tests.fixtures.toy_mae import ToyMAE, ToyMAEConfig

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).resolve().parents[1] / "fixtures" / "recipes" / "toy-classify.yaml"


def test_linear_probe_caches_features(base, tmp_path):
    recipe = load_recipe(str(RECIPE))
    first = run_finetune(recipe, str(base), tmp_path, FinetuneOptions(method="linear-probe"))
    # the probe scored exactly what a probe on directly extracted features scores
    from torch.utils.data import DataLoader

    from foundation.eval.probe import fit_probe
    from foundation.finetune.runner import _split
    from foundation.finetune import extract_features
    from tests.fixtures.toy_mae import ToyLabelledTokens

    data = ToyLabelledTokens(recipe.data.config)
    train, test, _ = _split(data, FinetuneOptions(method="linear-probe"), "classification")  # the runner's split
    enc = ToyMAE.from_pretrained(base)
    Xtr, ytr = extract_features(enc, DataLoader(train, batch_size=64))
    Xte, yte = extract_features(enc, DataLoader(test, batch_size=64))
    assert first["metrics"] == fit_probe(Xtr, ytr, Xte, yte, seed=recipe.train.seed).metrics
    stamp = (tmp_path / "features.safetensors").stat().st_mtime_ns
    second = run_finetune(recipe, str(base), tmp_path, FinetuneOptions(method="linear-probe"))
    assert (tmp_path / "features.safetensors").stat().st_mtime_ns == stamp  # computed once
    assert second["metrics"] == first["metrics"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["method"] == "linear-probe" and (tmp_path / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.parametrize("method,extra", [("full", {}), ("lora", {"targets": ("fc1", "fc2")}),
                                          ("dopamine", {"targets": ("fc1",), "adapter": {"skip_modules": ("fc2",)}})])
def test_trained_methods(base, tmp_path, method, extra):
    recipe = load_recipe(str(RECIPE))
    res = run_finetune(recipe, str(base), tmp_path, FinetuneOptions(method=method, **extra))
    assert res["metrics"]["balanced_accuracy"] > 0.6, res["metrics"]  # chance is 1/3
    assert (tmp_path / "finetune_curves.png").stat().st_size > 0  # training + held-out loss, held-out score
    toy = ToyMAE(ToyMAEConfig())
    n_all = sum(p.numel() for p in toy.parameters())
    if method == "full":  # every encoder parameter forward_features reaches, plus the new head; not the decoder
        unreached = ("mask_token.", "decoder.", "head.")
        n_used = sum(p.numel() for n, p in toy.named_parameters() if not n.startswith(unreached))
        assert res["trainable_params"] == n_used + 3 * (toy.embed_dim + 1)
        card = (tmp_path / "model" / "README.md").read_text()
        # a local base is named in the text, never as the Hub's base_model (which must be a Hub id)
        assert f"local checkpoint `{Path(base).resolve()}`" in card and "base_model:" not in card
    else:
        assert res["trainable_params"] < n_all / 4
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()
        saved = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))  # the head is inside
        assert {k for k in saved if k.startswith(("base_model.model.head.", "head."))} == ({"base_model.model.head.weight", "base_model.model.head.bias"}
                                                      if method == "lora" else {"head.weight", "head.bias"})
    if method == "dopamine":
        macs = json.loads((tmp_path / "macs.json").read_text())
        assert 0 < macs["done"] <= macs["dense"]
        assert (tmp_path / "attribution" / "attribution.png").stat().st_size > 0


def test_lp_ft_head_starts_at_the_probe(base, tmp_path):
    """head_init='probe': with a learning rate of ~0 the fine-tuned model scores what the linear probe scores."""
    frozen = ["train.lr=1e-12", "train.steps=2", "train.warmup_steps=1"]
    probe = run_finetune(load_recipe(str(RECIPE)), str(base), tmp_path / "p", FinetuneOptions(method="linear-probe"))
    for method in ("full", "lora"):
        res = run_finetune(load_recipe(str(RECIPE), frozen), str(base), tmp_path / method,
                           FinetuneOptions(method=method, targets=("fc1", "fc2")))
        for k in ("balanced_accuracy", "auroc"):
            assert res["metrics"][k] == pytest.approx(probe["metrics"][k], abs=1e-3), (method, k)
    rand = run_finetune(load_recipe(str(RECIPE), frozen), str(base), tmp_path / "r",
                        FinetuneOptions(method="full", head_init="random"))
    assert rand["metrics"]["auroc"] != pytest.approx(probe["metrics"]["auroc"], abs=1e-3)


def test_bad_method_and_mismatched_checkpoint(base, tmp_path):
    with pytest.raises(ConfigError, match="--method 'lora2' unknown"):
        FinetuneOptions(method="lora2")
    with pytest.raises(ConfigError, match="--head-init 'zeros' unknown"):
        FinetuneOptions(method="full", head_init="zeros")
    other = tmp_path / "other"
    ToyMAE(ToyMAEConfig()).save_pretrained(other)
    weights = load_file(other / "model.safetensors")
    weights["extra.weight"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(weights, str(other / "model.safetensors"))
    with pytest.raises(CheckpointError, match="extra.weight"):
        run_finetune(load_recipe(str(RECIPE)), str(other), tmp_path / "o", FinetuneOptions())


def test_lora_under_zero3_with_two_ranks(base, tmp_path):
    """LoRA fine-tuning under ZeRO-3: the adapter saved after the 16-bit gather holds real (non-empty) weights."""
    import subprocess
    import sys

    from foundation.pretrain.distributed import free_port
    from tests.pretrain._launch import ROOT, check, env

    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(ROOT / "finetune.py"), "--from", str(base), "--recipe", str(RECIPE), "--method", "lora",
           "--targets", "fc1", "fc2", "--output-dir", str(tmp_path), "--set", "deepspeed.zero_stage=3",
           "--set", "train.steps=4", "--set", "train.warmup_steps=1"]
    check(subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600))
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # trained (B starts at zero)
    assert adapter["base_model.model.head.weight"].shape == (3, 32)  # the head, gathered from ZeRO-3 shards
