"""Two runs sharing one cache folder or demo corpus: both succeed, read the same data, build it once.

Issue 15: a sweep launched as two jobs with the same ``data.cache_dir`` crashed (both processes wrote and
renamed the same temporary names). These tests start two real processes at the same moment.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundation.data.cache import DataCache
from foundation.data.demo import make_once
from foundation.data.lock import folder_lock, lock_path
from tests.data._race_worker import SlowBuilder

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_two_processes_prepare_one_cache_and_corpus_at_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"s{i}.txt").write_text(f"{i} {i * 2} {i * 3}")
    log, go = tmp_path / "log.txt", tmp_path / "go"
    args = [sys.executable, "-m", "tests.data._race_worker", str(src), str(tmp_path / "shared" / "cache"),
            str(tmp_path / "shared" / "cache-demo"), str(log), str(go)]
    procs = [subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    time.sleep(1.0)  # both imported and polling for the start signal
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert a == b  # identical data in both runs
    assert a["kept"] == 3 and a["arrays"][1] == [1.0, 2.0, 3.0] and len(a["corpus"]) == 4
    lines = log.read_text().splitlines()
    assert sum(line.startswith("corpus") for line in lines) == 1  # the corpus was written once ...
    assert sum(line.startswith("read") for line in lines) == 3  # ... and each source read once: the second waited
    leftovers = [p.name for p in (tmp_path / "shared").iterdir() if ".build-" in p.name or ".old-" in p.name]
    assert leftovers == []


_HOLD = """
import sys, time
from foundation.data.lock import folder_lock
with folder_lock(sys.argv[1]):
    open(sys.argv[2], "w").write("held")
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_is_cleared(tmp_path, caplog):
    folder = tmp_path / "cache"
    flag = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(flag)], cwd=ROOT, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the holder never took the lock"
            time.sleep(0.05)
        assert str(proc.pid) in lock_path(folder).read_text()  # the holder is named for whoever waits
        stage = tmp_path / f".cache.build-{proc.pid}@{os.uname().nodename}-abc"  # its half-built cache
        stage.mkdir()
        (stage / "junk.npy").write_bytes(b"x")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(folder).exists()  # the lock file is left behind ...
    src = tmp_path / "a.txt"
    src.write_text("1 2")
    t0 = time.monotonic()
    report = DataCache(folder, SlowBuilder(tmp_path / "log.txt")).prepare([src])
    assert time.monotonic() - t0 < 30  # ... but stale: taken at once
    assert report["n_kept"] == 1 and not stage.exists()  # and the killed run's staging folder is removed


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with folder_lock(tmp_path / "x"):
        with folder_lock(tmp_path / "x"):
            pass
    order = []

    def nested(folder: Path) -> None:  # a corpus writer that prepares the same corpus folder again
        order.append("outer")
        with folder_lock(tmp_path / "c"):
            order.append("inner")
        (folder / "a").write_text("1")

    root = make_once(tmp_path / "c", {"n": 1}, nested)
    assert (root / "a").read_text() == "1" and order == ["outer", "inner"]  # no deadlock on itself
