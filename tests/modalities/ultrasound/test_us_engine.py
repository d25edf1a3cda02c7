"""A real 2-rank DeepSpeed run (CPU, gloo) of the ultrasound-mtl-tiny recipe, then evaluation of its export."""
from __future__ import annotations

import math

import pytest
import torch

from foundation.config import load_recipe
from foundation.pretrain.components import build_model
from foundation.pretrain.run_log import read_jsonl
from tests.pretrain._launch import ROOT, check, run_pretrain

pytestmark = pytest.mark.slow
RECIPE = ROOT / "foundation" / "recipes" / "ultrasound-mtl-tiny.yaml"


def test_tiny_recipe_two_ranks_and_export(tmp_path):
    data = [f"data.cache_dir={tmp_path / 'cache'}", "data.demo_images_per_task=4"]
    check(run_pretrain(tmp_path / "run", "train.steps=4", "train.warmup_steps=1", *data, ranks=2, recipe=RECIPE))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["tasks_in_batch"] >= 1 for r in records)

    from foundation.modalities.ultrasound.dataset import UltrasoundDataset
    from foundation.modalities.ultrasound.evaluate import evaluate
    from foundation.modalities.ultrasound.model import UltrasoundMTL
    from foundation.modalities.ultrasound.predict import predict

    model = UltrasoundMTL.from_pretrained(tmp_path / "run" / "export")
    recipe = load_recipe(str(RECIPE), data)
    torch.manual_seed(recipe.train.seed)  # the engine's initial weights
    initial = build_model(recipe)
    for name in ("fpn", "backbone"):
        before = dict(getattr(initial, name).named_parameters())
        assert any(not torch.equal(p, before[k]) for k, p in getattr(model, name).named_parameters()), name
    val = UltrasoundDataset(load_recipe(str(RECIPE), [*data, "data.split=val"]).data.config)
    per_task = evaluate(predict(model, val.records, image_size=64), model.table)
    assert len(per_task) == 27
