"""``arch:NAME``: an imported architecture or a suite recipe's encoder at random init, through ``foundation.load``
and ``finetune --from`` (the spelling the benchmark names models by)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import foundation
from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.finetune.runner import FinetuneOptions, check_base, run_finetune

warnings.filterwarnings("ignore", category=UserWarning, module="braindecode")


def test_arch_of_a_suite_recipe_builds_its_encoder_at_random_init():
    enc = foundation.load("arch:deeperbrain-tiny")
    want = load_recipe("deeperbrain-tiny").model.config
    assert enc.model_name == "deeperbrain" and enc.hub_config() == want


def test_arch_specs_are_checked_against_the_recipe():
    eeg = load_recipe("deeperbrain-tiny-probe")
    assert check_base(eeg, "arch:labram") == (None, "")
    assert check_base(eeg, "arch:deeperbrain-tiny") == (None, "")
    with pytest.raises(ConfigError, match="use an EEG recipe"):
        check_base(load_recipe("slim-brain-tiny-probe"), "arch:labram")
    with pytest.raises(ConfigError, match="is a 'slim-brain' checkpoint"):
        check_base(eeg, "arch:slim-brain-tiny")
    with pytest.raises(ConfigError, match="neither an imported architecture nor a suite recipe"):
        check_base(eeg, "arch:labrm")


@pytest.mark.slow
@pytest.mark.parametrize("base,method,arch_set", [
    ("arch:biot", "full", {"embed_dim": 32, "num_layers": 2, "num_heads": 2}),
    ("arch:eegpt", "linear-probe", {"embed_dim": 16, "embed_num": 1, "depth": 1, "num_heads": 2,
                                    "missing_channels": "mask"}),
])
def test_random_init_architectures_fine_tune_through_the_runner(tmp_path, base, method, arch_set):
    recipe = load_recipe("deeperbrain-tiny-probe", [
        f"data.cache_dir={tmp_path / 'cache'}", "data.demo.n_subjects=4", "data.demo.blocks_per_class=1",
        "train.steps=2", "train.warmup_steps=1", "train.micro_batch_size=4", "train.progress_bar=false"])
    out = tmp_path / "run"
    result = run_finetune(recipe, base, out, FinetuneOptions(method=method, arch_set=arch_set, lr_decay=0.5))
    assert "at random init" in result["load_report"]
    ran = (out / "recipe.yaml").read_text()
    assert f"name: {base[5:]}" in ran and "init: random init" in ran
    load = json.loads((out / "base_load.json").read_text())
    assert load["from"] == base and len(load["channels"]) == 4
    if base == "arch:biot":  # bipolar derivations from the monopolar demo montages
        assert all(len(r["derived"]) == 16 and "FP1" in r["mapped"] for r in load["channels"])
        model = foundation.load(out / "model")
        assert model.config.encoder == "biot" and model(torch.randn(1, 16, 800)).shape == (1, 3)
    else:
        assert {tuple(r["masked"]) for r in load["channels"]} == {()}  # 19 channels of 10-20: every montage has them


@pytest.fixture(scope="module")
def eeg_cache(tmp_path_factory):
    """One demo corpus and cache folder shared by the cases (each contract's rate gets its own cache beside it)."""
    return tmp_path_factory.mktemp("published-cache") / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear-probe", "mlp-probe", "full", "lora", "dopamine"])
@pytest.mark.parametrize("arch", ["labram", "cbramod", "eegpt", "biot", "bendr"])
def test_every_method_on_every_imported_architecture(eeg_cache, tmp_path, arch, method):
    """Each of the five methods fine-tunes each imported architecture (small, random init) end to end, and the
    fine-tune's folder loads back with foundation.load and reproduces the held-out predictions."""
    import csv

    from tests.modalities.eeg.published.test_methods import SIZES

    kwargs = {k: v for k, v in SIZES[arch][0].items() if k != "patch_size"}
    recipe = load_recipe("deeperbrain-tiny-probe", [
        f"data.cache_dir={eeg_cache}", "data.demo.n_subjects=4", "data.demo.blocks_per_class=1",
        "train.steps=1", "train.warmup_steps=0", "train.micro_batch_size=4", "train.progress_bar=false"])
    out = tmp_path / "run"
    result = run_finetune(recipe, f"arch:{arch}", out, FinetuneOptions(method=method, arch_set=kwargs))
    assert 0.0 <= result["metrics"]["balanced_accuracy"] <= 1.0 and "at random init" in result["load_report"]
    folder = {"full": "model", "lora": "adapter", "dopamine": "adapter"}.get(method)
    if folder is None:  # probes write their head beside the run
        assert (out / "probe_head.safetensors").is_file()
        return
    model = foundation.load(out / folder)
    from foundation.loading import task_model_of

    encoder = task_model_of(model).encoder
    assert encoder.model_name == arch
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["source"] for r in rows)
