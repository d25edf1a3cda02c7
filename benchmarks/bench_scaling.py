"""Samples/s of each tiny recipe at 1 and 2 DeepSpeed ranks on CPU (gloo), measured side by side in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scaling.py                 # 3 recipes x 2 world sizes
    PYTHONPATH=. .venv/bin/python benchmarks/bench_scaling.py --steps 8 --recipes deeperbrain-tiny

Each recipe is pretrained for ``--steps`` optimizer steps (no checkpoint until the end, no export) with
``python pretrain.py`` (1 rank) and ``deepspeed --num_gpus 2 pretrain.py`` (2 ranks), the micro-batch per rank
fixed (weak scaling: 2 ranks train twice the samples per step). samples/s is the median of the engine's own
per-step figure (``metrics.jsonl``; samples of all ranks / wall time of the step) over the steps after the first
two. Ratio = 2-rank / 1-rank samples/s (2.0 would be perfect scaling). Peak memory: the largest ``ru_maxrss``
among the processes of the launch (each launch runs under a fresh Python process that reads its children's).

The machine's load (``uptime``) is printed with the table: on a shared 2-core machine the 2-rank figure is
bounded by the cores the other processes leave.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from foundation.pretrain.distributed import free_port

RECIPES = ("deeperbrain-tiny", "slim-brain-tiny", "ultrasound-mtl-tiny")
# runs the launch and prints the largest max RSS (KiB) among its processes (RUSAGE_CHILDREN covers grandchildren
# that their parents waited for: the launcher's ranks)
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=False); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def run(recipe: str, ranks: int, steps: int, out: Path, cache_root: Path) -> tuple[float, float]:
    """Pretrain ``recipe`` on ``ranks`` ranks; return (median samples/s after 2 steps, peak RSS of a rank in MiB)."""
    args = ["--recipe", recipe, "--output-dir", str(out), "--no-export",
            "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=0", "--set", "train.progress_bar=false",
            "--set", "train.warmup_steps=1", "--set", f"data.cache_dir={cache_root / recipe}"]
    if ranks == 1:
        cmd = [sys.executable, str(ROOT / "pretrain.py"), *args]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
               str(free_port()), str(ROOT / "pretrain.py"), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", _PEAK, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} on {ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
    peak = int(proc.stdout.strip().splitlines()[-1]) / 1024
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["samples_per_s"] for r in records[2:]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for recipe in args.recipes:
            got = {ranks: run(recipe, ranks, args.steps, tmp / f"{recipe}-{ranks}", tmp / "cache") for ranks in (1, 2)}
            rows.append((recipe, got))
            print(f"{recipe}: 1 rank {got[1][0]:.1f} samples/s, 2 ranks {got[2][0]:.1f} samples/s", flush=True)
    print(f"\nload: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"{args.steps} steps each, median samples/s over steps 3-{args.steps}, micro-batch per rank as in the recipe\n")
    print("| recipe | 1 rank samples/s | 2 ranks samples/s | ratio 2/1 | peak RSS of a process, 2 ranks (MiB) |")
    print("|---|---|---|---|---|")
    for recipe, got in rows:
        print(f"| {recipe} | {got[1][0]:.1f} | {got[2][0]:.1f} | {got[2][0] / got[1][0]:.2f} | {got[2][1]:.0f} |")


if __name__ == "__main__":
    main()
