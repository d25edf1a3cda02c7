"""A real 2-rank DeepSpeed run of the shipped deeperbrain-tiny recipe (CPU, gloo)."""
from __future__ import annotations

import math

import pytest

from foundation.config import load_recipe
from foundation.modalities.eeg.model import DeeperBrain
from tests.pretrain._launch import ROOT, check, losses, run_pretrain

RECIPE = ROOT / "foundation" / "recipes" / "deeperbrain-tiny.yaml"


def test_tiny_recipe_validates():
    recipe = load_recipe("deeperbrain-tiny")
    assert recipe.model.name == "deeperbrain" and recipe.data.name == "eeg-windows"
    assert recipe.data.config.labels == ("rest", "motor", "memory")
    assert load_recipe("deeperbrain").model.config.embed_dim == 512


@pytest.mark.slow
def test_two_rank_deepspeed_run_of_deeperbrain_tiny(tmp_path):
    out = tmp_path / "run"
    check(run_pretrain(out, "train.steps=4", "train.warmup_steps=1", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.demo.n_subjects=3", "data.demo.blocks_per_class=1", "train.micro_batch_size=2",
                       ranks=2, recipe=RECIPE))
    got = losses(out)
    assert sorted(got) == [1, 2, 3, 4] and all(math.isfinite(v) for v in got.values())
    assert (tmp_path / "cache" / "report.json").exists()
    model = DeeperBrain.from_pretrained(out / "export")
    assert model.config.embed_dim == 64
    assert "windows of 4 s" in (out / "export" / "README.md").read_text()
