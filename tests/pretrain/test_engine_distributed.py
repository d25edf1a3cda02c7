"""Real 2-rank DeepSpeed runs on CPU (gloo): ZeRO-2/3, bf16 on/off, and exact resume."""
from __future__ import annotations

import pytest
import torch

from foundation.config import load_recipe
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.export import consolidate_fp32
from tests.pretrain._launch import TOY_RECIPE, check, losses, run_pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """20 steps in one go, ZeRO-2, fp32, 2 ranks; checkpoints at 10 and 20."""
    out = tmp_path_factory.mktemp("straight")
    check(run_pretrain(out, "train.steps=20", "train.checkpoint_every=10", ranks=2, extra=("--no-export",)))
    return out


def test_two_ranks_zero2_fp32_trains(straight_run):
    got = losses(straight_run)
    assert sorted(got) == list(range(1, 21))
    assert sum(list(got.values())[-5:]) < sum(list(got.values())[:5])  # the loss falls
    ckpts = CheckpointDir(straight_run / "checkpoints")
    assert ckpts.latest() == "step_00000020"
    assert {"rng_rank0.json", "rng_rank1.json"} <= {p.name for p in (ckpts.root / "step_00000020").iterdir()}
    assert (straight_run / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("stage,bf16", [(2, True), (3, False), (3, True)])
def test_two_ranks_zero_stages_and_bf16(tmp_path, stage, bf16):
    check(run_pretrain(tmp_path, "train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=0", f"deepspeed.zero_stage={stage}",
                       f"deepspeed.bf16={str(bf16).lower()}", ranks=2))
    got = losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(v)) for v in got.values())
    # the export holds fp32 weights consolidated from the shards, equal to zero_to_fp32's
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "export" / "model.safetensors")
    state = consolidate_fp32(tmp_path / "checkpoints", "step_00000004", load_recipe(str(TOY_RECIPE)))
    assert all(v.dtype == torch.float32 for v in exported.values())
    for k, v in exported.items():
        torch.testing.assert_close(v, state[f"model.{k}"], rtol=0, atol=0)


def test_parameters_unused_on_one_rank(tmp_path):
    """A head that only rank 0's batch reaches (multi-task training) must not desynchronise ZeRO-2's reductions."""
    check(run_pretrain(tmp_path, "objective.aux_on_rank0=true", "train.steps=3", "train.warmup_steps=1",
                       "train.checkpoint_every=0", ranks=2, extra=("--no-export",)))
    assert sorted(losses(tmp_path)) == [1, 2, 3]


def test_resume_is_exact(straight_run, tmp_path):
    """20 steps straight vs 10 steps, stop, resume 10 more: identical per-step losses."""
    first = check(run_pretrain(tmp_path, "train.steps=20", "train.checkpoint_every=10", ranks=2,
                               extra=("--no-export", "--stop-after", "10")))
    assert "stopped early at step 10" in first.stdout
    check(run_pretrain(tmp_path, "train.steps=20", "train.checkpoint_every=10", ranks=2,
                       extra=("--no-export", "--resume")))
    assert losses(tmp_path) == losses(straight_run)



def test_two_nodes_as_the_multinode_runner_starts_them(tmp_path):
    """Multi-node: `deepspeed --hostfile` ssh-es into each node and runs DeepSpeed's per-node launcher there
    with the world layout and the node's rank. Run those two per-node launchers here (2 "nodes" x 1 rank on
    127.0.0.1), exactly as the runner would, and check that both ranks join one job."""
    import base64
    import json
    import subprocess
    import sys

    from foundation.pretrain.distributed import free_port
    from tests.pretrain._launch import ROOT, env

    world = base64.urlsafe_b64encode(json.dumps({"node-a": [0], "node-b": [0]}).encode()).decode()
    port, out = free_port(), tmp_path / "run"
    procs = [
        subprocess.Popen([sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world}",
                          f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                          str(ROOT / "pretrain.py"), "--recipe", str(TOY_RECIPE), "--output-dir", str(out),
                          "--no-export", "--set", "train.steps=2", "--set", "train.warmup_steps=1",
                          "--set", "train.progress_bar=false"],
                         cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    ckpt = out / "checkpoints" / "step_00000002"
    assert {"rng_rank0.json", "rng_rank1.json"} <= {p.name for p in ckpt.iterdir()}
