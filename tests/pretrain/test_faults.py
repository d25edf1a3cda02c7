"""Faults during a 2-rank run on CPU (gloo): a rank killed or hung, a checkpoint write that fails, SIGTERM while a
checkpoint is written.

The ranks are started as two separate ``python pretrain.py`` processes, the way a multi-node job starts them
(the ``deepspeed`` launcher would take every rank down with the first that dies). Faults inside a process are
injected by a ``sitecustomize`` module put first on that rank's PYTHONPATH; the shipped code has no test hook.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundation.errors import CheckpointError
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.distributed import DistInfo, is_collective_failure
from tests.pretrain._launch import check, losses, run_pretrain, start_ranks

# 20 steps, a checkpoint every 5, small enough that a rank can be stopped between two of them
RUN = ("train.steps=20", "train.checkpoint_every=5", "train.warmup_steps=2")
WAIT_S = 300  # generous bound on any wait; the only timing assertion is the 60 s exit

# a rank whose RANK equals FAULT_RANK patches torch.save: the first write into a FAULT_TAG folder fails or
# receives SIGTERM first, as FAULT says
_SITECUSTOMIZE = '''
import os

if os.environ.get("FAULT_RANK") == os.environ.get("RANK"):
    import errno
    import signal

    import torch

    _save, _fired = torch.save, []

    def _faulty_save(obj, f, *args, **kwargs):
        if os.environ["FAULT_TAG"] in str(f) and not _fired:
            _fired.append(f)
            fault = os.environ["FAULT"]
            if fault == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            if fault == "write-failed":  # what torch's zip writer raises when a write() fails
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: "
                                   "PytorchStreamWriter failed writing file data/0: file write failed")
            if fault == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
        return _save(obj, f, *args, **kwargs)

    torch.save = _faulty_save
'''


def _inject(tmp_path: Path) -> Path:
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return folder


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err


def _wait_for_step(out: Path, step: int, procs: list[subprocess.Popen]) -> None:
    """Wait until rank 0 has logged optimizer step ``step``."""
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                _, err = p.communicate()
                pytest.fail(f"a rank ended (exit {p.returncode}) before step {step}:\n{err[-4000:]}")
        if metrics.is_file():
            lines = [line for line in metrics.read_text().splitlines() if line.strip()]
            if len(lines) >= step:
                return
        time.sleep(0.02)
    pytest.fail(f"step {step} not reached within {WAIT_S} s")


def _fake_states(root: Path, tag: str) -> None:
    (root / tag).mkdir(parents=True, exist_ok=True)
    (root / tag / "mp_rank_00_model_states.pt").write_bytes(b"states")


def test_a_write_that_fails_on_another_rank_fails_the_save_on_every_rank(tmp_path):
    """Rank 0 wrote its share, rank 1 (seen through the gathered errors) could not: rank 0 raises the same
    CheckpointError, leaves `latest` alone and removes the partial folder."""
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    ckpts.save(_fake_states, 5, rank=0)
    seen = []

    def gather(error):  # rank 1's view, as all_gather_object returns it
        seen.append(error)
        return [error, None if len(seen) > 1 else "OSError: [Errno 28] No space left on device"]

    with pytest.raises(CheckpointError, match=r"step_00000010 could not be written \(rank 1: OSError: \[Errno 28\] "
                       r"No space left on device\); `latest` still names step_00000005, the partial folder was "
                       r"removed.*--resume from step_00000005"):
        ckpts.save(_fake_states, 10, rank=0, gather=gather)
    assert seen == [None] and ckpts.latest() == "step_00000005"
    assert sorted(p.name for p in ckpts.root.glob("step_*")) == ["step_00000005"]


def test_a_failed_write_on_this_rank_is_a_checkpoint_error_naming_the_cause(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints")

    def disk_full(root: Path, tag: str) -> None:
        _fake_states(root, tag)
        raise OSError(28, "No space left on device", str(root / tag / "mp_rank_00_model_states.pt"))

    with pytest.raises(CheckpointError, match=r"rank 0: OSError: \[Errno 28\] No space left on device: '.*"
                       r"mp_rank_00_model_states.pt'\); there is no earlier checkpoint"):
        ckpts.save(disk_full, 3, rank=0)
    assert ckpts.latest() is None and not (ckpts.root / "step_00000003").exists()


@pytest.mark.parametrize("text,expected", [
    ("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:5266: Connection reset by peer.", True),
    ("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:9644.", True),
    ("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete", True),
    ("mat1 and mat2 shapes cannot be multiplied (8x16 and 32x8)", False),
    ("DataLoader timed out after 5 seconds", False),
])
def test_collective_failures_are_told_from_other_errors(text, expected):
    assert is_collective_failure(RuntimeError(text)) is expected


def test_describe_failure_names_the_dead_peer_and_the_silent_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / ".ranks"
        folder.mkdir()
        host = socket.gethostname()
        for rank, proc in ((1, dead), (2, alive)):
            (folder / f"rank{rank}.json").write_text(json.dumps(
                {"rank": rank, "host": host, "pid": proc.pid, "started": None}))
        (folder / "rank3.json").write_text(json.dumps({"rank": 3, "host": "node-b", "pid": 1, "started": None}))
        text = DistInfo(0, 5, 0, timeout_s=30, ranks_dir=folder).describe_failure(grace_s=0)
    finally:
        alive.kill()
        alive.wait()
    assert f"lost rank 1 (pid {dead.pid} on {host}): the process is gone" in text
    assert "could not check rank 3 (on host node-b), rank 4 (unrecorded)" in text
    assert f"rank 2 (pid {alive.pid}) still running but not answering" in text
    assert "train.collective_timeout_s=30 s" in text


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted run: 2 ranks, 20 steps."""
    out = tmp_path_factory.mktemp("straight")
    check(run_pretrain(out, *RUN, ranks=2, extra=("--no-export",)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_kill_9_of_one_rank_stops_the_other_naming_it_and_resume_is_exact(straight_run, tmp_path, killed):
    out = tmp_path / "run"
    procs = start_ranks(out, *RUN, extra=("--no-export",))
    try:
        _wait_for_step(out, 7, procs)  # past the checkpoint at step 5
        procs[killed].send_signal(signal.SIGKILL)
        procs[killed].wait()  # reaped, as a launcher or the node's init would
        t0 = time.monotonic()
        code, _, err = _finish(procs[1 - killed])
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
    pid = procs[killed].pid
    assert code == 2, err[-4000:]
    assert f"lost rank {killed} (pid {pid}" in err and "the process is gone" in err, err[-4000:]
    assert "--resume to continue from" in err and "Traceback" not in err, err[-4000:]
    assert took <= 60, f"the surviving rank took {took:.1f} s to exit"
    print(f"surviving rank {1 - killed} exited {took:.1f} s after rank {killed} was killed")
    # the last complete checkpoint is the one named, and resuming from it reproduces the uninterrupted run
    tag = CheckpointDir(out / "checkpoints").latest()
    assert tag is not None and f"continue from {out / 'checkpoints' / tag}" in err
    check(run_pretrain(out, *RUN, ranks=2, extra=("--no-export", "--resume")))
    assert losses(out) == losses(straight_run)


@pytest.mark.slow
def test_a_hung_rank_is_named_after_the_collective_timeout(tmp_path):
    out = tmp_path / "run"
    procs = start_ranks(out, *RUN, "train.collective_timeout_s=5", extra=("--no-export",))
    try:
        _wait_for_step(out, 7, procs)
        procs[1].send_signal(signal.SIGSTOP)
        code, _, err = _finish(procs[0])
    finally:
        for p in procs:
            p.kill()
    assert code == 2, err[-4000:]
    assert f"rank 1 (pid {procs[1].pid}) still running but not answering" in err, err[-4000:]
    assert "train.collective_timeout_s=5" in err and "Traceback" not in err, err[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["enospc", "write-failed"])
def test_a_failed_checkpoint_write_keeps_latest_and_stops_every_rank(tmp_path, fault):
    """Rank 1 alone cannot write its share of step 10 (disk full; torch's failed write): both ranks stop with the
    same CheckpointError, ``latest`` stays on step 5, and the run resumes from it."""
    out = tmp_path / "run"
    procs = start_ranks(out, *RUN, extra=("--no-export",), pythonpath=(_inject(tmp_path),),
                        fault_env={"FAULT": fault, "FAULT_RANK": "1", "FAULT_TAG": "step_00000010"})
    try:
        results = [_finish(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
    folder = out / "checkpoints" / "step_00000010"
    cause = "No space left on device" if fault == "enospc" else "file write failed"
    assert all("Error in sitecustomize" not in err for _, _, err in results)  # the fault was injected
    for rank, (code, _, err) in enumerate(results):
        assert code == 2, f"rank {rank}: {err[-4000:]}"
        assert f"checkpoint {folder} could not be written (rank 1: " in err and cause in err, err[-4000:]
        assert "`latest` still names step_00000005" in err and "Traceback" not in err, err[-4000:]
    ckpts = CheckpointDir(out / "checkpoints")
    assert ckpts.latest() == "step_00000005" and not folder.exists()
    ckpts.verify("step_00000005")
    check(run_pretrain(out, *RUN, ranks=2, extra=("--no-export", "--resume")))
    assert ckpts.latest() == "step_00000020" and sorted(losses(out)) == list(range(1, 21))


@pytest.mark.slow
def test_sigterm_while_a_checkpoint_is_written_ends_with_that_checkpoint_complete(tmp_path):
    """SIGTERM reaches rank 1 inside DeepSpeed's save of step 10: the save completes, every rank stops right
    there (no further step, no second checkpoint), and the run resumes from it."""
    out = tmp_path / "run"
    procs = start_ranks(out, *RUN, extra=("--no-export",), pythonpath=(_inject(tmp_path),),
                        fault_env={"FAULT": "sigterm", "FAULT_RANK": "1", "FAULT_TAG": "step_00000010"})
    try:
        results = [_finish(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all("Error in sitecustomize" not in err for _, _, err in results)  # the fault was injected
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank}: {err[-4000:]}"
    assert "stopped early at step 10" in results[0][1]
    ckpts = CheckpointDir(out / "checkpoints")
    assert ckpts.latest() == "step_00000010"
    ckpts.verify("step_00000010")
    assert sorted(p.name for p in ckpts.root.glob("step_*")) == ["step_00000005", "step_00000010"]
    assert sorted(losses(out)) == list(range(1, 11))
