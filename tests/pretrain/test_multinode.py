"""Two nodes on one machine (2 nodes x 1 rank on 127.0.0.1), launched the two ways a cluster user does without ssh:
DeepSpeed's launcher once per node (``deepspeed --hostfile H --no_ssh --node_rank i``) and ``torchrun --nnodes 2
--node_rank i``. The toy run is started by one launcher and resumed by the other, then exported; the tiny EEG
recipe runs 2 steps and exports.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.distributed import free_port
from tests.pretrain._launch import ROOT, TOY_RECIPE, env, losses

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _node_commands(launcher: str, hostfile: Path, port: int, script_args: list[str]) -> list[list[str]]:
    """The command each of the two nodes runs (what a cluster job script runs on node 0 and node 1)."""
    script = [str(ROOT / "pretrain.py"), *script_args]
    if launcher == "deepspeed":
        return [[str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
                 "--master_addr", "127.0.0.1", "--master_port", str(port), *script] for node in (0, 1)]
    return [[str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
             "--master_addr", "127.0.0.1", "--master_port", str(port), *script] for node in (0, 1)]


def _two_nodes(launcher: str, tmp: Path, recipe: Path | str, out: Path, *overrides: str,
               extra: tuple[str, ...] = ()) -> list[str]:
    """Run both nodes to the end; return each node's output (stdout + stderr)."""
    hostfile = tmp / "hosts.txt"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")  # names only: --no_ssh never contacts them
    args = ["--recipe", str(recipe), "--output-dir", str(out), "--set", "train.progress_bar=false", *extra]
    for o in overrides:
        args += ["--set", o]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in _node_commands(launcher, hostfile, free_port(), args)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=900)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for node, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"{launcher} node {node} exit {p.returncode}:\n{text[-5000:]}"
    return outputs


def test_toy_run_on_two_nodes_deepspeed_then_resumed_with_torchrun(tmp_path):
    out = tmp_path / "run"
    common = ("train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=2")
    _two_nodes("deepspeed", tmp_path, TOY_RECIPE, out, *common, extra=("--stop-after", "2", "--no-export"))
    ckpts = CheckpointDir(out / "checkpoints")
    assert ckpts.latest() == "step_00000002"
    assert {"rng_rank0.json", "rng_rank1.json", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= {
        p.name for p in (ckpts.root / "step_00000002").iterdir()}

    _two_nodes("torchrun", tmp_path, TOY_RECIPE, out, *common, extra=("--resume",))
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert ckpts.latest() == "step_00000004"
    from safetensors.torch import load_file

    exported = load_file(out / "export" / "model.safetensors")
    from foundation.config import load_recipe
    from foundation.pretrain.export import consolidate_fp32

    state = consolidate_fp32(ckpts.root, "step_00000004", load_recipe(str(out / "recipe.yaml")))
    for k, v in exported.items():
        torch.testing.assert_close(v, state[f"model.{k}"], rtol=0, atol=0)


def test_tiny_eeg_recipe_on_two_nodes(tmp_path):
    out = tmp_path / "run"
    _two_nodes("torchrun", tmp_path, "deeperbrain-tiny", out, "train.steps=2", "train.warmup_steps=1",
               "train.micro_batch_size=2", f"data.cache_dir={tmp_path / 'cache'}")
    assert sorted(losses(out)) == [1, 2]
    assert (out / "export" / "model.safetensors").is_file()
    assert CheckpointDir(out / "checkpoints").latest() == "step_00000002"
