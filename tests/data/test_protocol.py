"""prepare_dataset: one prepare per node in a real 2-process gloo group, and no hang when it fails."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from foundation.data.protocol import prepare_dataset


class CountingDataset:
    """Appends a line to ``config`` (a file) on every prepare; fails when the file is named 'fail'."""

    @classmethod
    def prepare(cls, config: Path) -> dict:
        with open(config, "a") as fh:
            fh.write(f"{os.environ['RANK']}\n")
        if config.name == "fail":
            raise RuntimeError("prepare failed on rank 0")
        return {"n_kept": 1}


def _worker(rank: int, port: int, log: Path, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        try:
            result = repr(prepare_dataset(CountingDataset, log))
        except RuntimeError as err:
            result = f"error: {err}"
        dist.barrier()  # both ranks got here: nobody hangs
        (out / f"rank{rank}.txt").write_text(result)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["ok", "fail"])
def test_local_rank_zero_prepares_once_and_the_others_wait(tmp_path, name):
    log = tmp_path / name
    mp.start_processes(_worker, args=(_free_port(), log, tmp_path), nprocs=2, join=True, start_method="spawn")
    assert log.read_text() == "0\n"  # prepared once, by rank 0
    if name == "ok":
        assert (tmp_path / "rank0.txt").read_text() == "{'n_kept': 1}"
        assert (tmp_path / "rank1.txt").read_text() == "None"
    else:
        assert (tmp_path / "rank0.txt").read_text() == "error: prepare failed on rank 0"
        assert (tmp_path / "rank1.txt").read_text() == "None"  # went on; its dataset then finds no cache


def test_without_a_process_group_it_just_prepares(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    # no group, or the one-rank group an in-process engine run (an earlier test) leaves behind: no barrier
    assert not dist.is_initialized() or dist.get_world_size() == 1
    assert prepare_dataset(CountingDataset, tmp_path / "single") == {"n_kept": 1}
    assert (tmp_path / "single").read_text() == "0\n"
    assert prepare_dataset(torch.utils.data.TensorDataset, tmp_path) is None  # nothing to prepare
