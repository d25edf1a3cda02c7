"""The first run on a CPU machine says that DeepSpeed is compiling its communication op (minutes, otherwise silent)."""
from __future__ import annotations

from pathlib import Path

from foundation.pretrain.distributed import announce_op_build


def test_a_due_build_is_announced_once_built_it_is_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty extension cache: the op must be built
    monkeypatch.setenv("LOCAL_RANK", "0")
    folder = announce_op_build()
    assert folder is not None and Path(folder).is_relative_to(tmp_path)
    err = capsys.readouterr().err
    assert "compiling its CPU communication op deepspeed_shm_comm" in err and str(folder) in err

    monkeypatch.setenv("LOCAL_RANK", "1")  # other ranks of the node stay quiet
    assert announce_op_build() == folder and capsys.readouterr().err == ""

    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "deepspeed_shm_comm.so").write_bytes(b"")  # what a finished build leaves
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert announce_op_build() is None and capsys.readouterr().err == ""
