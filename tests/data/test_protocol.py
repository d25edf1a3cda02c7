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


def test_check_preprocessing_names_every_field_that_differs():
    from foundation.data.protocol import check_preprocessing
    from foundation.errors import DataError

    model = {"modality": "eeg", "sfreq_hz": 200.0, "window_seconds": 4.0, "scale_from_volts": 1e4}
    check_preprocessing(model, dict(model), "m", "d")  # the same: nothing to say
    check_preprocessing({}, model, "m", "d")  # a model that records nothing checks nothing
    check_preprocessing(model, {"modality": "eeg", "sfreq_hz": 200.0}, "m", "d")  # only fields both name
    with pytest.raises(DataError) as err:
        check_preprocessing(model, {**model, "sfreq_hz": 256.0, "window_seconds": 2.0}, "my-model", "--data x")
    text = str(err.value)
    assert "sfreq_hz: model 200.0, data 256.0" in text and "window_seconds: model 4.0, data 2.0" in text
    assert "my-model" in text and "--data x" in text and "scale_from_volts" not in text


def test_item_rows_and_class_labels_without_the_optional_methods():
    from foundation.data.protocol import class_labels, item_rows, preprocessing_of

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"x": torch.zeros(2), "label": torch.tensor(i % 2)}

        def groups(self):
            return ["a", "b", "c"]

    ds = Plain()
    assert class_labels(ds) == [0, 1, 0] and preprocessing_of(ds) == {}
    assert item_rows(ds, [2, 0]) == [{"index": 2, "subject": "c"}, {"index": 0, "subject": "a"}]
