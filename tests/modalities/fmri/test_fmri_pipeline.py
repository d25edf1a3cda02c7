"""End to end on a small demo corpus: prepare -> windows -> probes / shared fine-tuning; slim-brain-tiny on 2 DeepSpeed ranks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torch.utils.data import DataLoader, Subset

from foundation.config import load_recipe
from foundation.data.demo import demo_folder
from foundation.data.splits import group_split
from foundation.errors import DataError
from foundation.eval.metrics import classification_metrics, regression_metrics
from foundation.eval.probe import fit_probe
from foundation.finetune import FinetuneOptions, TaskModel, extract_features, finetune_model, predict
from foundation.modalities.fmri.dataset import FMRIWindows, FMRIWindowsConfig
from foundation.modalities.fmri.demo_corpus import N_NETWORKS, read_labels
from foundation.modalities.fmri.downstream import attentive_probe, linear_probe
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


def _encoder() -> Hiera4D:
    model_cfg = load_recipe("slim-brain-tiny").model.config
    fields = {k: v for k, v in model_cfg.__dict__.items() if k in Hiera4DConfig.__dataclass_fields__}
    torch.manual_seed(0)
    return Hiera4D(Hiera4DConfig(**{**fields, "embed_dim": 8, "stages": (1, 1, 1)}))  # the recipe's geometry, narrower


def test_linear_probe_equals_the_reference_computation(demo):
    _, _, ds = demo
    enc = _encoder()
    train_idx, test_idx = group_split(ds.groups(), 0.25, seed=0)
    lin = linear_probe(enc, ds, train_idx, test_idx, seed=3)
    # reference: mean-pooled frozen features of each split, then the shared probe with the same seed
    Xtr, ytr = extract_features(enc, DataLoader(Subset(ds, train_idx.tolist()), batch_size=8))
    Xte, yte = extract_features(enc, DataLoader(Subset(ds, test_idx.tolist()), batch_size=8))
    ref = fit_probe(Xtr, ytr, Xte, yte, kind="linear", seed=3)
    assert lin.metrics == ref.metrics
    assert torch.equal(lin.y_pred, ref.y_pred) and torch.equal(lin.y_true, yte)


def test_attentive_probe_fits_its_training_windows(demo):
    """Scored on its own training windows, the attentive probe separates the 4 networks; 5 epochs do not yet."""
    _, _, ds = demo
    enc = _encoder()
    every = np.arange(len(ds))
    assert attentive_probe(enc, ds, every, every, epochs=100, seed=0).metrics["balanced_accuracy"] == 1.0
    assert attentive_probe(enc, ds, every, every, epochs=5, seed=0).metrics["balanced_accuracy"] < 1.0


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_shared_finetune_of_an_in_memory_encoder(demo, task, tmp_path):
    """Full fine-tuning goes through the shared loop (foundation.finetune.finetune_model), not a modality loop."""
    cfg, _, ds = demo
    if task == "regression":
        ds = FMRIWindows(FMRIWindowsConfig(**{**cfg.__dict__, "label_column": "drive"}))
    enc = _encoder()
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    train_idx, test_idx = group_split(ds.groups(), 0.25, seed=0)
    train, test = Subset(ds, train_idx.tolist()), Subset(ds, test_idx.tolist())
    recipe = load_recipe("slim-brain-tiny-probe", ["train.steps=3", "train.warmup_steps=1", "train.micro_batch_size=4",
                                                   "train.progress_bar=false", f"objective.task={task}"])
    model = TaskModel.for_encoder(enc, N_NETWORKS if task == "classification" else 1, task)
    res = finetune_model(model, train, test, recipe, FinetuneOptions(method="full", head_init="random"), tmp_path)
    assert any(not torch.equal(before[n], p) for n, p in enc.named_parameters() if n.startswith("blocks."))
    out, y = predict(model, DataLoader(test, batch_size=4), task)
    ref = classification_metrics(y, out) if task == "classification" else regression_metrics(y, out)
    assert ref == pytest.approx(res["metrics"], abs=1e-6)  # the scores are the trained model's held-out scores
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == res["metrics"]
    if task == "regression":
        assert y.dtype == torch.float32 and np.isfinite(res["metrics"]["mae"])


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
