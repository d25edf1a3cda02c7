"""``foundation explain`` on a fine-tune of an imported EEG architecture (LaBraM, tiny, random init): the data go
through the importer's input contract exactly as ``foundation predict`` takes them."""
from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch

from foundation.cli import main
from foundation.finetune.task_model import TaskModel
from foundation.registry import MODELS

pytestmark = pytest.mark.slow
warnings.filterwarnings("ignore", category=UserWarning, module="braindecode")


def test_explain_a_labram_fine_tune_through_its_contract(tmp_path):
    torch.manual_seed(0)
    cls = MODELS.get("labram")
    encoder = cls(cls.config_class(n_times=400, kwargs={"num_layers": 2, "num_heads": 4}))
    folder = tmp_path / "model"
    TaskModel.for_encoder(encoder, 3).eval().save_pretrained(folder)
    sets = [a for kv in (f"data.cache_dir={tmp_path / 'eeg'}", "data.demo.n_subjects=3", "data.demo.blocks_per_class=1")
            for a in ("--set", kv)]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(folder), "--data", "deeperbrain-tiny-probe", *sets, "--out", str(out),
                 "--n-items", "6", "--ig-steps", "8", "--method", "ig", "occlusion", "random"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modality"] == "eeg-published" and summary["fine_tune"]
    # every row of the CSV is one of the checkpoint's channels (the contract's table), never a recording's own
    with open(out / "eeg_ig.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["channel"] for r in rows} == set(encoder.config.channels)
    assert summary["ig_completeness_error"] < 0.05
    assert set(summary["planted_share"]["ig"]) <= {"rest", "motor", "memory"}
    # the explained inputs are predict's inputs: the model's accuracy on them (deletion at 0) is predict's
    preds = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(folder), "--data", "deeperbrain-tiny-probe", *sets,
                 "--out", str(preds)]) == 0
    with open(preds) as f:
        by_index = list(csv.DictReader(f))
    hits = [by_index[i]["prediction"] == by_index[i]["label"] for i in summary["items"]]
    acc0 = next(d for d in summary["deletion"] if d["method"] == "ig")["acc@0"]
    assert acc0 == pytest.approx(sum(hits) / len(hits))
    assert (out / "topomap_ig.png").stat().st_size > 5000


def test_rollout_is_refused_for_a_published_architecture(tmp_path, capsys):
    cls = MODELS.get("labram")
    folder = tmp_path / "model"
    TaskModel.for_encoder(cls(cls.config_class(n_times=400, kwargs={"num_layers": 1, "num_heads": 2})), 3) \
        .save_pretrained(folder)
    assert main(["explain", "--model", str(folder), "--data", "deeperbrain-tiny-probe", "--set",
                 f"data.cache_dir={tmp_path / 'eeg'}", "--out", str(tmp_path / "o"), "--method", "rollout"]) == 2
    assert "'rollout' does not apply to this model; valid here: ig, occlusion, random" in capsys.readouterr().err
