"""One-process runs of the engine: SIGTERM, non-finite loss, interrupted checkpoint writes, export round trip."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foundation.config import load_recipe
from foundation.errors import CheckpointError
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.export import consolidate_fp32
from foundation.pretrain.run_log import read_jsonl
from tests.fixtures.toy_mae import ToyMAE
from tests.pretrain._launch import ROOT, TOY_RECIPE, check, env, losses, run_pretrain

pytestmark = pytest.mark.slow


def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    cmd = [sys.executable, str(ROOT / "pretrain.py"), "--recipe", str(TOY_RECIPE), "--output-dir", str(tmp_path),
           "--set", "train.steps=100000", "--set", "train.checkpoint_every=0", "--set", "train.progress_bar=false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped early" in out
    tag = CheckpointDir(tmp_path / "checkpoints").latest()
    step = int(tag.split("_")[1])
    assert step >= 3 and step == read_jsonl(log)[-1]["step"]
    state = consolidate_fp32(tmp_path / "checkpoints", tag, load_recipe(str(TOY_RECIPE)))
    ToyMAE(load_recipe(str(TOY_RECIPE)).model.config).load_state_dict(
        {k[6:]: v for k, v in state.items() if k.startswith("model.")}, strict=True)


def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path):
    # sample 37 is NaN; batch size 8 on one rank: it shows up in the first epoch
    proc = run_pretrain(tmp_path, "data.nan_at=37", "train.steps=40", "train.checkpoint_every=2")
    assert proc.returncode == 2
    assert "non-finite loss at optimizer step" in proc.stderr
    assert "last good checkpoint" in proc.stderr or "no checkpoint yet" in proc.stderr
    assert "train.max_nonfinite_skips" in proc.stderr


def test_nonfinite_loss_skipped_when_allowed(tmp_path):
    check(run_pretrain(tmp_path, "data.nan_at=37", "train.steps=40", "train.max_nonfinite_skips=5",
                       "train.checkpoint_every=0", extra=("--no-export",)))
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, 41)) and all(torch.isfinite(torch.tensor(v)) for v in got.values())


def test_crash_while_checkpointing_keeps_latest(tmp_path):
    check(run_pretrain(tmp_path, "train.steps=4", "train.checkpoint_every=2", extra=("--no-export",)))
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    assert ckpts.latest() == "step_00000004"

    def dies_midway(root: Path, tag: str) -> None:
        (root / tag).mkdir()
        (root / tag / "mp_rank_00_model_states.pt").write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(CheckpointError, match=r"step_00000006 could not be written .*disk full.*still names step_00000004"):
        ckpts.save(dies_midway, step=6, rank=0, barrier=lambda: None)
    assert ckpts.latest() == "step_00000004"
    # the run resumes from the last good checkpoint and finishes; the torso is cleaned up
    check(run_pretrain(tmp_path, "train.steps=6", "train.checkpoint_every=2", extra=("--no-export", "--resume")))
    assert ckpts.latest() == "step_00000006"
    assert sorted(losses(tmp_path)) == list(range(1, 7))


def test_export_then_from_pretrained_reproduces_outputs(tmp_path):
    check(run_pretrain(tmp_path, "train.steps=3", "train.warmup_steps=1", "train.checkpoint_every=0"))
    export = tmp_path / "export"
    loaded = ToyMAE.from_pretrained(export)
    recipe = load_recipe(str(TOY_RECIPE))
    reference = ToyMAE(recipe.model.config)
    state = consolidate_fp32(tmp_path / "checkpoints", "step_00000003", recipe)
    reference.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")}, strict=True)
    x = torch.randn(3, 16, 8)
    keep = torch.arange(0, 16, 2).expand(3, -1)
    torch.testing.assert_close(loaded.eval()(x, keep), reference.eval()(x, keep), rtol=0, atol=0)
    card = (export / "README.md").read_text()
    assert "toy-mae" in card and "loss" in card
    assert json.loads((export / "config.json").read_text())["embed_dim"] == recipe.model.config.embed_dim
