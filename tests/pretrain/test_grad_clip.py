"""The engine's own gradient clipping at ZeRO stage 0 (``foundation/pretrain/grad_clip.py``) against DeepSpeed's."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from foundation.config import load_recipe
from foundation.pretrain.engine import deepspeed_config
from foundation.pretrain.grad_clip import StageZeroClip, clip_total_norm, split_clipping
from foundation.pretrain.distributed import free_port
from foundation.pretrain.run_log import read_jsonl
from tests.pretrain._launch import ROOT, check, env, run_pretrain


@pytest.mark.parametrize("overrides, engine_clips", [
    (["deepspeed.zero_stage=0"], True),
    (["deepspeed.zero_stage=1"], False),
    (["deepspeed.zero_stage=2"], False),
    (["deepspeed.zero_stage=3"], False),
    (["deepspeed.zero_stage=0", "deepspeed.bf16=true"], False),  # DeepSpeed's bf16 optimizer clips its fp32 copy
    (["deepspeed.zero_stage=0", "deepspeed.gradient_clipping=0"], False),  # no clipping at all
])
def test_split_clipping_gives_stage_zero_fp32_to_the_engine(overrides, engine_clips):
    cfg = deepspeed_config(load_recipe("deeperbrain-tiny", overrides))
    before = json.dumps(cfg, sort_keys=True)
    ds_cfg, max_norm = split_clipping(cfg)
    assert json.dumps(cfg, sort_keys=True) == before  # the recipe's config is not changed in place
    if engine_clips:
        assert max_norm == cfg["gradient_clipping"] > 0 and ds_cfg["gradient_clipping"] == 0.0
        assert {k: v for k, v in ds_cfg.items() if k != "gradient_clipping"} == \
            {k: v for k, v in cfg.items() if k != "gradient_clipping"}
    else:
        assert max_norm == 0.0 and ds_cfg is cfg


def test_stage_zero_clip_is_the_formula_deepspeed_uses():
    """Total norm sqrt(sum ||g_p||^2) before clipping; every gradient scaled by min(1, max / (norm + 1e-6))."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))
    module[2].bias.requires_grad_(False)  # frozen: not clipped, not counted
    module(torch.randn(11, 5)).square().sum().backward()
    grads = [p.grad.clone() for p in module.parameters() if p.requires_grad]
    expected = torch.stack([g.norm() for g in grads]).square().sum().sqrt()
    for max_norm in (float(expected) * 2, float(expected) / 3):
        for p, g in zip([p for p in module.parameters() if p.requires_grad], grads):
            p.grad = g.clone()
        norm = StageZeroClip(module, max_norm)()
        torch.testing.assert_close(norm, expected)
        coef = min(1.0, max_norm / (float(expected) + 1e-6))
        for p, g in zip([p for p in module.parameters() if p.requires_grad], grads):
            torch.testing.assert_close(p.grad, g * coef)
    assert clip_total_norm([], 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        StageZeroClip(module, 0.0)


def _compare(cmd: list[str]) -> dict:
    proc = check(subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600))
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_stage_zero_clipping_matches_deepspeeds_own(ranks):
    """DeeperBrain-tiny, ZeRO 0, accumulation 2, max norm 0.05 (every step clips): the weights after 3 optimizer
    steps and the norm of every step equal DeepSpeed's own clipping, on one rank and on two."""
    if ranks == 1:
        cmd = [sys.executable, "-m", "tests.pretrain._stage0_clip"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "tests.pretrain._stage0_clip"]
    out = _compare(cmd)
    assert out["world"] == ranks
    assert out["ds_engine_norm"] is None  # DeepSpeed keeps no norm at stage 0 in fp32: the run log had none
    assert len(out["ds_norms"]) == len(out["our_norms"]) == 3 and min(out["ds_norms"]) > 0.05  # each step clipped
    torch.testing.assert_close(torch.tensor(out["our_norms"]), torch.tensor(out["ds_norms"]), rtol=1e-5, atol=0)
    assert out["moved"] > 1e-3 and out["diff"] < 1e-6, out


@pytest.mark.slow
def test_engine_logs_the_norm_it_clipped_at_stage_zero_as_deepspeed_does_at_stage_one(tmp_path):
    """The real launcher, one rank, the toy recipe with clipping at 0.05: stage 0 (the engine clips) and stage 1
    (DeepSpeed's ZeRO-1 optimizer clips and reports its norm) log the same losses and grad norms."""
    logs = {}
    for stage in (0, 1):
        out = tmp_path / f"z{stage}"
        check(run_pretrain(out, f"deepspeed.zero_stage={stage}", "deepspeed.gradient_clipping=0.05", "train.steps=4",
                           "train.checkpoint_every=0", "train.log_every=1"))
        logs[stage] = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in logs[0]] == [1, 2, 3, 4]
    for a, b in zip(logs[0], logs[1]):
        assert b["grad_norm"] > 0.05  # clipped
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
