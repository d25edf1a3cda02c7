"""End to end on a small demo corpus: prepare -> windows -> probes / fine-tuning; slim-brain-tiny on 2 DeepSpeed ranks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foundation.config import load_recipe
from foundation.errors import DataError
from foundation.data.demo import demo_folder
from foundation.data.splits import group_split
from foundation.modalities.fmri.dataset import FMRIWindows, FMRIWindowsConfig
from foundation.modalities.fmri.demo_corpus import N_NETWORKS, read_labels
from foundation.modalities.fmri.downstream import attentive_probe, finetune, linear_probe
from foundation.modalities.fmri.hiera4d import Hiera4D, Hiera4DConfig

ROOT = Path(__file__).resolve().parents[3]
TINY_RECIPE = ROOT / "foundation" / "recipes" / "slim-brain-tiny.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = load_recipe("slim-brain-tiny").data.config
    cfg = FMRIWindowsConfig(**{**base.__dict__, "cache_dir": str(tmp_path_factory.mktemp("fmri") / "cache"),
                               "demo_subjects": 8, "demo_frames": 48, "top_k": 2})
    report = FMRIWindows.prepare(cfg)
    return cfg, report, FMRIWindows(cfg)


def test_demo_corpus_is_bids_with_labels_and_sidecars(demo):
    cfg, report, ds = demo
    src = demo_folder(cfg.cache_dir)
    labels = read_labels(src / "labels.tsv")
    assert len(labels) == 8 and {v["label"] for v in labels.values()} == set(range(N_NETWORKS))
    assert all("sidecar" in e["meta"]["tr_note"] for e in ds.scans) and report["n_left_out"] == 0
    item = ds[0]
    assert item["x"].shape == (1, 8, 24, 24, 24) and item["unit_fg"].shape == (4 * 3 * 3 * 3,)
    name = Path(ds.scans[int(item["scan"])]["source"]).name
    assert int(item["label"]) == labels[name]["label"]
    assert len(ds) == 8 * 2 and len(set(ds.groups())) == 8


def test_dataset_refuses_a_stale_window_list(demo, tmp_path):
    cfg, _, _ = demo
    other = FMRIWindowsConfig(**{**cfg.__dict__, "selection": "random"})
    with pytest.raises(DataError, match="no window list; run FMRIWindows.prepare"):
        FMRIWindows(other)


def test_probes_and_finetune_run_and_score(demo):
    cfg, _, ds = demo
    model_cfg = load_recipe("slim-brain-tiny").model.config
    fields = {k: v for k, v in model_cfg.__dict__.items() if k in Hiera4DConfig.__dataclass_fields__}
    enc = Hiera4D(Hiera4DConfig(**{**fields, "embed_dim": 8, "stages": (1, 1, 1)}))  # the recipe's geometry, narrower
    train_idx, test_idx = group_split(ds.groups(), 0.25, seed=0)
    lin = linear_probe(enc, ds, train_idx, test_idx)
    att = attentive_probe(enc, ds, train_idx, test_idx, epochs=5)
    ft = finetune(enc, ds, train_idx, test_idx, epochs=1, batch_size=4)
    for res in (lin, att, ft):
        assert 0.0 <= res.metrics["balanced_accuracy"] <= 1.0 and len(res.y_pred) == len(test_idx)
    reg = finetune(enc, FMRIWindows(FMRIWindowsConfig(**{**cfg.__dict__, "label_column": "drive"})), train_idx, test_idx,
                   task="regression", epochs=1, batch_size=4)
    assert np.isfinite(reg.metrics["mae"]) and reg.y_true.dtype == torch.float32


@pytest.mark.slow
def test_slim_brain_tiny_pretrains_on_two_deepspeed_ranks(tmp_path):
    from tests.pretrain._launch import check, losses, run_pretrain

    proc = run_pretrain(tmp_path / "run", "train.steps=3", "train.micro_batch_size=2", "data.demo_subjects=4",
                        "data.demo_frames=48", f"data.cache_dir={tmp_path / 'cache'}", "model.ema_steps=3",
                        ranks=2, recipe=TINY_RECIPE)
    check(proc)
    got = losses(tmp_path / "run")
    assert sorted(got) == [1, 2, 3] and all(np.isfinite(v) for v in got.values())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["target_std"] > 0 for r in records)
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
