"""A run folder is untrusted input: no state file it holds may run code, and damaged or incomplete
checkpoints are refused with a CheckpointError naming the file, by ``--resume`` and by ``export``."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from foundation.cli import main
from foundation.errors import CheckpointError
from foundation.pretrain.checkpoint import CheckpointDir, check_state_file
from tests.pretrain._launch import check, run_pretrain


class _RunsCode:
    """Unpickling this calls ``os.system``: what a crafted state file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_and_deepspeed_state_passes(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "optim_states.pt"
    torch.save({"w": torch.ones(3), "scaler": LossScaler(1.0), "stage": ZeroStageEnum(2), "step": 5}, path)
    check_state_file(path)


def test_a_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"optim_states.pt: refused.*references posix.system"):
        check_state_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_a_truncated_state_file_is_unreadable(tmp_path, cut):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.randn(256, 256)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=r"model_states.pt: unreadable state file"):
        check_state_file(path)


def test_verify_refuses_missing_incomplete_and_empty_tags(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpts.verify("step_00000001")
    (tmp_path / "step_00000001").mkdir()
    with pytest.raises(CheckpointError, match="is incomplete"):
        ckpts.verify("step_00000001")
    (tmp_path / "step_00000001" / "COMPLETE").write_text("1\n")
    with pytest.raises(CheckpointError, match="holds no DeepSpeed state file"):
        ckpts.verify("step_00000001")


@pytest.mark.slow
def test_resume_and_export_refuse_a_crafted_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    check(run_pretrain(run, "train.steps=2", "train.warmup_steps=1", "train.checkpoint_every=1",
                       "deepspeed.zero_stage=2", extra=("--no-export",)))
    ckpts = CheckpointDir(run / "checkpoints")
    assert ckpts.verify("step_00000002")  # a real ZeRO-2 checkpoint passes

    # an incomplete tag: export names it instead of a raw EOFError
    shutil.copytree(run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000003")
    (run / "checkpoints" / "step_00000003" / "COMPLETE").unlink()
    assert main(["export", str(run), "--tag", "step_00000003"]) == 2
    assert "step_00000003 is incomplete" in capsys.readouterr().err

    # a crafted optimizer state in the latest checkpoint: neither export nor --resume runs it
    marker = tmp_path / "code-ran"
    evil = run / "checkpoints" / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _RunsCode(marker)}, evil)
    assert main(["export", str(run)]) == 2
    assert "optim_states.pt: refused" in capsys.readouterr().err
    resumed = run_pretrain(run, "train.steps=4", "train.warmup_steps=1", extra=("--no-export", "--resume"))
    assert resumed.returncode == 2 and "optim_states.pt: refused" in resumed.stderr
    assert not marker.exists()
