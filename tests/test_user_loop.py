"""The user's whole loop on each shipped model, through the ``foundation`` command and a loopback Hub.

Each shipped model (DeeperBrain, SLIM-Brain, the ultrasound CNN) goes: ``foundation pretrain`` of its tiny recipe
(a few steps, exported at the end) -> ``foundation push`` -> ``foundation finetune --from <hub id>`` (lora,
dopamine, full) -> ``foundation push`` of the fine-tune folder -> in a fresh process ``foundation predict
--model <hub id>``, whose predictions must equal the fine-tune's own held-out predictions (``predictions.csv``).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.cli import main
from tests._support.hub_fixtures import hub_endpoint  # noqa: F401
from tests.finetune.test_runner_modalities import MODALITIES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train.steps=3", "train.warmup_steps=1", "train.micro_batch_size=4", "train.progress_bar=false"]
FOLDER = {"lora": "adapter", "dopamine": "adapter", "full": "model"}


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["index"]: row for row in csv.DictReader(fh)}


PRETRAIN = {  # the tiny pretraining recipe of each modality, on a small demo corpus
    "eeg": ("deeperbrain-tiny", ["data.demo.n_subjects=3", "data.demo.blocks_per_class=1"]),
    "fmri": ("slim-brain-tiny", ["data.demo_subjects=4", "data.demo_frames=48", "data.top_k=2", "model.embed_dim=8",
                                 "model.stages=[1,1,1]", "model.predictor_dim=16", "model.predictor_depth=1"]),
    "ultrasound": ("ultrasound-mtl-tiny", ["data.demo_images_per_task=2", "data.batch_size=2", "model.fpn_dim=16",
                                           "model.head_dim=8"]),
}


@pytest.fixture(scope="module", params=list(MODALITIES))
def pushed_base(request, tmp_path_factory):
    """(modality, a folder shared by the modality's tests, holding its pretraining run with ``export/``)."""
    modality, tmp = request.param, tmp_path_factory.mktemp(request.param)
    recipe, data = PRETRAIN[modality]
    sets = [a for kv in [*data, f"data.cache_dir={tmp / 'pre-cache'}", "train.steps=2", "train.warmup_steps=1",
                         "train.progress_bar=false"] for a in ("--set", kv)]
    proc = subprocess.run([sys.executable, "-m", "foundation.cli", "pretrain", "--recipe", recipe, "--output-dir",
                           str(tmp / "pretrain"), *sets], cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = tmp / "pretrain" / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["preprocessing"]["modality"] == modality  # what the model expects of new data
    made = json.loads((tmp / "pretrain" / "provenance.json").read_text())
    assert config["provenance"] == made and made["command"][:2] == ["foundation", "pretrain"]
    assert made["versions"]["deepspeed"] and "## Provenance" in (export / "README.md").read_text()
    return modality, tmp


def _check_card(folder: Path, base_id: str) -> None:
    """The card parses with huggingface_hub, has the Hub's fields, and its usage snippet runs."""
    import re

    from huggingface_hub import ModelCard

    import foundation
    from foundation.hub.card import USAGE_PLACEHOLDER

    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "foundation-suite" and data["license"] == "apache-2.0"
    assert data["base_model"] == base_id and data["datasets"] and data["pipeline_tag"]
    results = data["model-index"][0]["results"][0]
    assert {m["type"] for m in results["metrics"]} >= {"balanced_accuracy", "accuracy"}
    snippet = re.search(r"```python\n(.*?)```", card.text, re.DOTALL)[1]
    scope: dict = {}
    exec(snippet.replace(USAGE_PLACEHOLDER, str(folder)), scope)  # noqa: S102 - the card's own snippet
    assert not scope["model"].training and foundation.loading.task_model_of(scope["model"]) is not None


@pytest.mark.parametrize("method", ["lora", "dopamine", "full"])
def test_finetune_push_load_predict(pushed_base, method, hub_endpoint, monkeypatch):  # noqa: F811
    modality, tmp = pushed_base
    (recipe, *data), _ = MODALITIES[modality](tmp)
    export = tmp / "pretrain" / "export"
    base_id = f"me/{modality}-base"
    assert main(["push", str(export), base_id]) == 0
    sets = [a for kv in data + TRAIN for a in ("--set", kv)]
    out = tmp / f"ft-{method}"
    env = {**os.environ, **hub_endpoint.env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "foundation.cli", "finetune", "--from", base_id, "--recipe", recipe,
                           "--method", method, "--output-dir", str(out), *sets],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)  # a process per run, as users do
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["from"] == base_id and len(provenance["resolved_commit"]) == 40
    assert provenance["command"][:2] == ["foundation", "finetune"] and provenance["versions"]["peft"]
    _check_card(out / FOLDER[method], base_id)
    ft_id = f"me/{modality}-{method}"
    assert main(["push", str(out / FOLDER[method]), ft_id]) == 0

    preds = tmp / f"preds-{method}.csv"
    proc = subprocess.run([sys.executable, "-m", "foundation.cli", "predict", "--model", ft_id, "--data", recipe,
                           *[a for kv in data for a in ("--set", kv)], "--out", str(preds)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held_out, everything = _rows(out / "predictions.csv"), _rows(preds)
    assert held_out and set(held_out) <= set(everything)
    for index, row in held_out.items():
        other = everything[index]
        assert Path(row["source"].split("#")[0]).is_file()  # the file the item came from
        assert (other["subject"], other["source"], other["label"], other["prediction"]) == (
            row["subject"], row["source"], row["label"], row["prediction"])
        probs = [k for k in row if k.startswith("prob_")]
        assert probs and all(abs(float(other[k]) - float(row[k])) < 1e-5 for k in probs), (row, other)

    if modality == "eeg" and method == "lora":  # one modality shows the check; the comparison is the same for all
        _predict_refuses_data_prepared_otherwise(ft_id, recipe, data, tmp, env)


def _predict_refuses_data_prepared_otherwise(ft_id: str, recipe: str, data: list[str], tmp: Path, env: dict) -> None:
    """The fine-tune records the preprocessing it was trained with; data cut into other windows is refused."""
    other = [*data[1:], f"data.cache_dir={tmp / 'eeg-2s'}", "data.window_seconds=2"]
    proc = subprocess.run([sys.executable, "-m", "foundation.cli", "predict", "--model", ft_id, "--data", recipe,
                           *[a for kv in other for a in ("--set", kv)], "--out", str(tmp / "never.csv")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "prepared otherwise" in proc.stderr, proc.stderr[-2000:]
    assert "window_seconds: model 4.0, data 2.0" in proc.stderr and not (tmp / "never.csv").exists()
