"""Run the real launchers (``python pretrain.py`` and ``deepspeed --num_gpus 2 pretrain.py``) from tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from foundation.pretrain.distributed import free_port
from foundation.pretrain.run_log import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TOY_RECIPE = ROOT / "tests" / "fixtures" / "recipes" / "toy-mae.yaml"


def node_caches(full: Path, shared: list[Path], files: list[list[Path]], runs: list[list[int]], root: Path) -> list[Path]:
    """Lay out what each node of a job holds of the cache ``full``: ``root/node<r>`` gets the ``shared`` files
    and the files of rank r's shards (``files[k]``: shard k's, as ``ShardMap.files``; ``runs[r]``: rank r's
    shards), each at its place relative to ``full``. Returns the node folders, by rank."""
    nodes = []
    for rank, run in enumerate(runs):
        node = root / f"node{rank}"
        for path in shared + [p for k in run for p in files[k]]:
            target = node / path.relative_to(full)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        nodes.append(node)
    return nodes


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def run_pretrain(out: Path, *overrides: str, ranks: int = 1, extra: tuple[str, ...] = (),
                 recipe: Path = TOY_RECIPE, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run pretraining of ``recipe`` into ``out``; 1 rank with plain python, more with the deepspeed launcher."""
    args = ["--recipe", str(recipe), "--output-dir", str(out), "--set", "train.progress_bar=false"]
    for o in overrides:
        args += ["--set", o]
    args += list(extra)
    if ranks == 1:
        cmd = [sys.executable, str(ROOT / "pretrain.py"), *args]
    else:
        launcher = Path(sys.executable).parent / "deepspeed"
        cmd = [str(launcher), "--num_gpus", str(ranks), "--master_port", str(free_port()),
               str(ROOT / "pretrain.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl")}


def start_ranks(out: Path, *overrides: str, world: int = 2, extra: tuple[str, ...] = (),
                recipe: Path = TOY_RECIPE, pythonpath: tuple[Path, ...] = (),
                fault_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start ``world`` separate ``python pretrain.py`` processes as the ranks of one job, the way a multi-node
    launcher does (each with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT), so that one rank can die
    without a launcher taking the others down. ``pythonpath`` is put first on each rank's PYTHONPATH (a test's
    ``sitecustomize`` that injects a fault) and ``fault_env`` added to each rank's environment."""
    args = ["--recipe", str(recipe), "--output-dir", str(out), "--set", "train.progress_bar=false"]
    for o in overrides:
        args += ["--set", o]
    port = free_port()
    procs = []
    for rank in range(world):
        e = env()
        e.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
        e.update(fault_env or {})
        if pythonpath:
            e["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), e["PYTHONPATH"]])
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), *args, *extra], cwd=ROOT, env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs
