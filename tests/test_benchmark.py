"""`foundation benchmark` end to end on the shipped models' tiny probe recipes: the same stratified group folds for
every row, per-fold and per-subject metrics recomputed with scikit-learn, Wilcoxon p-values with scipy, resuming,
and folders that are refused."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

from foundation.benchmark import default_output_dir, parse_models, run_benchmark
from foundation.cli import main
from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
EEG_DATA = ["data.demo.n_subjects=6", "data.demo.blocks_per_class=1"]
TRAIN = ["train.steps=2", "train.warmup_steps=1", "train.micro_batch_size=4", "train.progress_bar=false"]


def _sets(items: list[str]) -> list[str]:
    return [a for kv in items for a in ("--set", kv)]


@pytest.fixture(scope="module")
def eeg_models(tmp_path_factory):
    """A DeeperBrain-tiny pretrained by the suite (2 steps, exported) and one at random init (seed 1)."""
    tmp = tmp_path_factory.mktemp("eeg-models")
    pre = [f"data.cache_dir={tmp / 'pre-cache'}", "data.demo.n_subjects=3", "data.demo.blocks_per_class=1", *TRAIN]
    # its own process, as a user runs it (its end tears down the process group this process's engine runs use)
    proc = subprocess.run([sys.executable, "-m", "foundation.cli", "pretrain", "--recipe", "deeperbrain-tiny",
                           "--output-dir", str(tmp / "pre"), *_sets(pre)], cwd=tmp, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = load_recipe("deeperbrain-tiny")
    torch.manual_seed(1)
    MODELS.get("deeperbrain")(recipe.model.config).save_pretrained(tmp / "random")
    return tmp / "pre" / "export", tmp / "random", tmp


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _bench(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(["benchmark", *args])
    out = capsys.readouterr().out
    return code, [line for line in out.splitlines() if re.match(r"\[\d+/\d+\] ", line)]


@pytest.mark.slow
def test_benchmark_end_to_end_on_deeperbrain(eeg_models, capsys):
    pre, rand, tmp = eeg_models
    out = tmp / "bench"
    sets = _sets([f"data.cache_dir={tmp / 'probe-cache'}", *EEG_DATA, *TRAIN])
    args = ["--models", f"pretrained={pre}", f"random={rand}", "--recipe", "deeperbrain-tiny-probe", *sets,
            "--methods", "linear-probe", "lora", "--folds", "2", "--output-dir", str(out)]
    code, lines = _bench(args, capsys)
    assert code == 0 and len(lines) == 2 * 2 * 2 * 2  # a "running" and a "done" line per cell
    assert lines[0].startswith("[1/8] pretrained / linear-probe / fold 1 of 2: running")
    for name in ("results.md", "results.csv", "results.json", "subject_scores.png", "splits.json"):
        assert (out / name).is_file(), name

    # the same folds for every row: stratified, subject-disjoint, every item held out once
    splits = json.loads((out / "splits.json").read_text())["folds"]
    folds, held_out = [f["test"] for f in splits], [set(f["test_subjects"]) for f in splits]
    assert sorted(i for te in folds for i in te) == list(range(36))
    assert sum(map(len, held_out)) == len(set().union(*held_out)) == 6  # each subject held out in one fold only
    cells = sorted(out.glob("cells/*/*/fold-*/cell.json"))
    assert len(cells) == 8
    for path in cells:
        cell = json.loads(path.read_text())
        test = folds[cell["fold"]]
        assert sorted(cell["items"]["index"]) == test
        preds = _csv(path.parent / "predictions.csv")
        assert sorted(int(r["index"]) for r in preds) == test
        assert {r["subject"] for r in preds} == set(cell["items"]["subject"]) == held_out[cell["fold"]]
        assert len(set(cell["items"]["label"])) == 3  # every class in every held-out fold
        # the fold's metrics are scikit-learn's on the fine-tune's own predictions
        names = [c[len("prob_"):] for c in preds[0] if c.startswith("prob_")]
        y = [names.index(r["label"]) for r in preds]
        p = [names.index(r["prediction"]) for r in preds]
        assert cell["metrics"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))

    # per-subject rows recomputed from the predictions; Wilcoxon p-values from scipy
    rows = _csv(out / "results.csv")
    per_subject: dict[str, dict[str, float]] = {}
    for path in cells:
        cell = json.loads(path.read_text())
        name = f"{cell['model']} / {cell['method']}"
        items = cell["items"]
        for s in set(items["subject"]):
            idx = [i for i, v in enumerate(items["subject"]) if v == s]
            ba = balanced_accuracy_score([items["label"][i] for i in idx],
                                         [int(np.argmax(items["prob"][i])) for i in idx])
            per_subject.setdefault(name, {})[s] = ba
    for r in rows:
        if r["level"] == "subject":
            assert float(r["balanced_accuracy"]) == pytest.approx(per_subject[f"{r['model']} / {r['method']}"][r["unit"]],
                                                                  abs=1e-6)
    assert sum(r["level"] == "subject" for r in rows) == 4 * 6 and sum(r["level"] == "fold" for r in rows) == 8
    report = json.loads((out / "results.json").read_text())
    assert len(report["tests"]) == 6
    for t in report["tests"]:
        subjects = sorted(per_subject[t["a"]])
        x, yv = [per_subject[t["a"]][s] for s in subjects], [per_subject[t["b"]][s] for s in subjects]
        if any(a != b for a, b in zip(x, yv)):
            assert t["p_value"] == pytest.approx(stats.wilcoxon(x, yv).pvalue)
    for row in report["rows"]:
        ba = row["balanced_accuracy"]
        assert ba["n"] == 6 and ba["mean"] == pytest.approx(np.mean(list(per_subject[row["row"]].values())))
        assert ba["low"] <= ba["mean"] <= ba["high"]
    text = (out / "results.md").read_text()
    assert "pretrained | lora" in text and "Wilcoxon" in text and "36 items of 6 subjects" in text

    # rerun: every cell kept, nothing recomputed
    stamp = {p: p.stat().st_mtime_ns for p in cells}
    code, lines = _bench(args, capsys)
    assert code == 0 and len(lines) == 8 and all("finished before, kept" in line for line in lines)
    assert all(p.stat().st_mtime_ns == stamp[p] for p in cells)
    assert json.loads((out / "results.json").read_text()) == report
    # a cell stopped before it finished runs again, alone; a new model adds its cells to the same folds
    unfinished = out / "cells" / "random" / "lora" / "fold-1"
    (unfinished / "cell.json").unlink()
    code, lines = _bench([*args[:3], f"again={pre}", *args[3:]], capsys)
    running = [line for line in lines if ": running" in line]
    assert code == 0 and len(running) == 1 + 2 * 2
    assert "random / lora / fold 2 of 2" in running[0] and all("again" in line for line in running[1:])
    again = json.loads((out / "cells" / "again" / "linear-probe" / "fold-0" / "cell.json").read_text())
    first = json.loads((out / "cells" / "pretrained" / "linear-probe" / "fold-0" / "cell.json").read_text())
    assert again["items"] == first["items"]  # the same checkpoint on the same fold: the same predictions

    # another protocol in the same folder is refused before any work
    assert main(["benchmark", *args[:-4], "--folds", "3", "--output-dir", str(out)]) == 2
    assert "another protocol (folds differ" in capsys.readouterr().err
    # folds the subjects cannot fill: refused, and nothing is left behind to block a rerun with fewer
    assert main(["benchmark", *args[:-4], "--folds", "7", "--output-dir", str(tmp / "too-many")]) == 2
    assert "7 folds for 6 groups; use fewer folds" in capsys.readouterr().err and not (tmp / "too-many").exists()


def test_foreign_folders_models_and_methods_are_refused(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    recipe = load_recipe("deeperbrain-tiny-probe", [f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="holds no benchmark.json"):
        run_benchmark(recipe, ["x"], ["linear-probe"], 3, other)
    assert (other / "notes.txt").read_text() == "mine" and not (tmp_path / "cache").exists()
    with pytest.raises(ConfigError, match="did you mean 'lora'"):
        run_benchmark(recipe, ["x"], ["lorra"], 3, tmp_path / "new")
    with pytest.raises(ConfigError, match=r"label\(s\) \['a'\] given twice"):
        parse_models(["a=x", "a=y"])
    with pytest.raises(ConfigError, match="expected SPEC or LABEL=SPEC"):
        parse_models(["=x"])
    assert parse_models(["arch:labram", "rand=runs/x"]) == [("arch:labram", "arch:labram"), ("rand", "runs/x")]
    assert main(["benchmark", "--models", "x", "--recipe", "deeperbrain-tiny-probe", "--methods", "nope",
                 "--output-dir", str(tmp_path / "n")]) == 2
    assert "--method 'nope' unknown" in capsys.readouterr().err


def test_default_output_dirs_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = default_output_dir("deeperbrain-tiny-probe")
    assert first.parent == Path("runs") / "benchmark" and first.name.startswith("deeperbrain-tiny-probe-")
    first.mkdir(parents=True)
    second = default_output_dir("deeperbrain-tiny-probe")
    assert second != first and not second.exists()


def _one_row(recipe_name: str, sets: list[str], model, tmp: Path) -> dict:
    torch.manual_seed(0)
    model.save_pretrained(tmp / "base")
    recipe = load_recipe(recipe_name, [*sets, *TRAIN])
    result = run_benchmark(recipe, [f"tiny={tmp / 'base'}"], ["linear-probe"], 2, tmp / "bench", say=lambda _: None)
    (row,) = result.rows
    assert row["subjects"] > 0 and 0.0 <= row["balanced_accuracy"]["mean"] <= 1.0
    assert len(list((tmp / "bench").glob("cells/tiny/linear-probe/fold-*/cell.json"))) == 2
    return row


@pytest.mark.slow
def test_benchmark_runs_the_slim_brain_probe_recipe(tmp_path):
    from foundation.config import dataclass_to_dict
    from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig

    fields = dataclass_to_dict(load_recipe("slim-brain-tiny").model.config)
    cfg = SlimBrainConfig(**{**fields, "embed_dim": 8, "stages": (1, 1, 1), "predictor_dim": 16, "predictor_depth": 1})
    sets = [f"data.cache_dir={tmp_path / 'fmri-cache'}", "data.demo_subjects=8", "data.demo_frames=48", "data.top_k=2"]
    _one_row("slim-brain-tiny-probe", sets, SlimBrain(cfg), tmp_path)


@pytest.mark.slow
def test_benchmark_runs_the_ultrasound_probe_recipe(tmp_path):
    from foundation.modalities.ultrasound.model import (
        UltrasoundMTL,
        UltrasoundMTLConfig,
    )

    cfg = UltrasoundMTLConfig(backbone="tinynet_e", fpn_dim=16, head_dim=8, tasks=("breast_3cls", "lung"))
    sets = [f"data.cache_dir={tmp_path / 'us-cache'}", "data.demo_images_per_task=24"]
    _one_row("ultrasound-mtl-tiny-probe", sets, UltrasoundMTL(cfg), tmp_path)
