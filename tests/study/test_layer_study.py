"""benchmarks/layer_study.py: its measures on known curves and signals, and a tiny end-to-end run."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("layer_study", ROOT / "benchmarks" / "layer_study.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_final_loss_and_steps_to_reach_on_a_known_curve():
    losses = [10.0 - i for i in range(10)]  # 10, 9, ..., 1
    assert study.final_loss(losses) == 1.0  # last 10% = last step
    assert study.final_loss([4.0] * 15 + [1.0, 3.0]) == 2.0  # ceil(1.7) = 2 steps
    smoothed = study.smooth(losses)
    assert smoothed[0] == 10.0  # bias-corrected: the first value itself
    target = 5.0
    n = study.steps_to_reach(losses, target)
    assert smoothed[n - 1] <= target < smoothed[n - 2]
    assert study.steps_to_reach(losses, 0.5) is None


def test_summary_ratios_against_the_baseline_of_the_same_seed():
    base = {"model": "deeperbrain", "swap": "gelu", "seed": 0, "steps": 4, "losses": [4.0, 3.0, 2.0, 1.0],
            "final_loss": 1.0, "step_s_median": 0.1, "peak_mb": 10.0, "probe_balanced_accuracy": 0.5}
    fast = dict(base, swap="ash", losses=[1.0, 1.0, 1.0, 1.0], step_s_median=0.2)
    agg = study.summarise([base, fast])["deeperbrain"]
    assert agg["ash"]["steps_to_base"] == [1.0] and agg["ash"]["time_ratio"] == [2.0]
    target = study.smooth(base["losses"])[-1]  # the baseline's smoothed final loss: it reaches it at its last step
    assert study.steps_to_reach(base["losses"], target) == 4
    assert agg["ash"]["speedup"] == [4.0] and agg["gelu"]["speedup"] == [1.0]


def test_perturbations_hit_the_snr_and_spare_padded_channels():
    C, T = 6, 20000
    x = torch.randn(C, T) * 3.0
    mask = torch.tensor([True] * 4 + [False] * 2)
    x[~mask] = 0.0
    items = [{"x": x, "chan_mask": mask, "label": 0}]
    noisy = study.Perturbed(items, "noise", 10.0, seed=1)[0]["x"]
    noise = noisy - x
    snr = 10 * torch.log10(x[mask].square().mean() / noise[mask].square().mean())
    assert abs(float(snr) - 10.0) < 0.1
    assert (noisy[~mask] == 0).all()
    assert torch.equal(study.Perturbed(items, "noise", 10.0, seed=1)[0]["x"], noisy)  # deterministic
    dropped = study.Perturbed(items, "dropout", 0.5, seed=1)[0]["x"]
    flat = [c for c in range(C) if (dropped[c] == 0).all()]
    assert len([c for c in flat if mask[c]]) == 2  # half of the 4 real channels
    assert torch.equal(study.Perturbed(items, "clean")[0]["x"], x)


@pytest.mark.slow
def test_smoke_two_steps_one_swap_one_seed_resumes_and_reports(tmp_path):
    out, figs = tmp_path / "study", tmp_path / "figures"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "layer_study.py"), "--out", str(out), "--models", "deeperbrain",
           "--swaps", "ash", "--seeds", "0", "--steps", "2", "--cache", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "error" not in rows[0], rows
    r = rows[0]
    assert r["swap"] == "ash" and len(r["losses"]) == 2 and r["final_loss"] == r["losses"][-1]
    assert 0.0 <= r["probe_balanced_accuracy"] <= 1.0 and r["step_s_median"] > 0
    assert "model.activation=ash" in r["overrides"] and Path(r["sparsity"]).is_file()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len((out / "results.jsonl").read_text().splitlines()) == 1  # resumed: skipped
    rep = subprocess.run([*cmd[:4], "--report", "--figures", str(figs)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "| ash | 1 |" in (out / "report.md").read_text()
    assert (figs / "layer_study_sparsity.png").stat().st_size > 0
