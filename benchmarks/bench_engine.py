"""Engine overhead vs a bare PyTorch loop, and per-rank memory of ZeRO stages 0-3 with 2 ranks (CPU).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_engine.py            # everything (about 5 minutes on 2 cores)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_engine.py --steps 40 --skip-zero

Part 1 (one process): the same model, data, objective, AdamW, warmup-cosine schedule and gradient
clipping, trained by (a) a bare loop (forward, backward, clip, step) and (b) the DeepSpeed engine
(progress bar off, logging on, no checkpoint until the end). Median seconds per optimizer step after
warm-up; ratio = engine / bare. Peak memory = the process's max RSS (ru_maxrss).

Part 2 (2 ranks under the `deepspeed` launcher, one launch per stage): per-rank bytes of the Adam
moments and of the fp32 master copies the optimizer holds, and each rank's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "tests" / "fixtures" / "recipes" / "toy-mae.yaml"
MODEL = ["model.n_tokens=32", "data.n_tokens=32", "model.embed_dim=256", "model.depth=4", "model.num_heads=4",
         "data.n_samples=1024", "train.micro_batch_size=16", "train.warmup_steps=2", "train.checkpoint_every=0",
         "train.progress_bar=false"]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_loop(steps: int) -> list[float]:
    """Seconds per step of a plain PyTorch loop over the engine's own components."""
    from foundation.config import load_recipe
    from foundation.pretrain.components import TrainModule, build_components
    from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer

    recipe = load_recipe(str(RECIPE), MODEL + [f"train.steps={steps}"])
    torch.manual_seed(recipe.train.seed)
    parts = build_components(recipe)
    module = TrainModule(parts.model, parts.objective)
    opt = build_optimizer(module, recipe.train)
    sched = WarmupCosineScheduler(opt, recipe.train)
    sampler = torch.utils.data.RandomSampler(parts.dataset, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(parts.dataset, batch_size=recipe.train.micro_batch_size, sampler=sampler,
                                         drop_last=True)
    times, it = [], iter(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss, _ = module(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), recipe.deepspeed.gradient_clipping)
        opt.step()
        sched.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    return times


def engine_loop(steps: int, out: Path, stage: int = 0, extra: tuple[str, ...] = ()) -> tuple[list[float], object]:
    """Seconds per step of the DeepSpeed engine (from its metrics log) and the finished Engine."""
    from foundation.config import load_recipe
    from foundation.pretrain.engine import Engine
    from foundation.pretrain.run_log import read_jsonl

    recipe = load_recipe(str(RECIPE), MODEL + [f"train.steps={steps}", f"deepspeed.zero_stage={stage}", *extra])
    eng = Engine(recipe, out)
    eng.run()
    if torch.distributed.get_rank() != 0:
        return [], eng  # only rank 0 writes the metrics log
    samples = recipe.train.micro_batch_size * torch.distributed.get_world_size()
    return [samples / r["samples_per_s"] for r in read_jsonl(out / "metrics.jsonl")], eng


def _optimizer_bytes(ds_engine: object) -> tuple[int, int]:
    """(Adam moment bytes, fp32 master-copy bytes) held by this rank's optimizer."""
    opt = ds_engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    model_storages = {p.untyped_storage().data_ptr() for p in ds_engine.module.parameters()}
    moments = sum(t.numel() * t.element_size() for s in inner.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.ndim > 0)
    masters, seen = 0, set()
    for g in inner.param_groups:
        for p in g["params"]:
            ptr = p.untyped_storage().data_ptr()
            if ptr not in model_storages and ptr not in seen:
                seen.add(ptr)
                masters += p.numel() * p.element_size()
    return moments, masters


def zero_worker(stage: int, steps: int, result_file: str) -> None:
    times, eng = engine_loop(steps, Path(result_file).parent / "run", stage)
    moments, masters = _optimizer_bytes(eng.ds_engine)
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in eng.ds_engine.module.parameters())
    record = {"stage": stage, "rank": torch.distributed.get_rank(), "moments": moments, "masters": masters,
              "params": n_params, "rss_mib": _rss_mib(), "step_s": statistics.median(times[2:]) if times else None}
    with open(f"{result_file}.rank{record['rank']}", "w") as f:
        json.dump(record, f)


def run_zero(steps: int) -> list[dict]:
    rows = []
    for stage in (0, 1, 2, 3):
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "r.json"
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", __file__,
                   "--zero-worker", str(stage), "--steps", str(steps), "--result", str(result)]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
            rows += [json.loads(Path(f"{result}.rank{r}").read_text()) for r in (0, 1)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip-zero", action="store_true")
    ap.add_argument("--zero-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.zero_worker is not None:
        zero_worker(args.zero_worker, 6, args.result)
        return
    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    warm = 5
    bare_rss0 = _rss_mib()
    bare = bare_loop(args.steps)
    bare_rss = _rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        eng, _ = engine_loop(args.steps, Path(tmp))
    eng_rss = _rss_mib()
    b, e = statistics.median(bare[warm:]), statistics.median(eng[warm:])
    print("\n## Engine overhead (one process, CPU)\n")
    print("| loop | median s/step | ratio vs bare | peak RSS MiB (process so far) |")
    print("|---|---|---|---|")
    print(f"| bare PyTorch | {b:.4f} | 1.00 | {bare_rss:.0f} (start {bare_rss0:.0f}) |")
    print(f"| DeepSpeed engine (stage 0) | {e:.4f} | {e / b:.3f} | {eng_rss:.0f} |")
    if args.skip_zero:
        return
    rows = run_zero(args.steps)
    base = {r["rank"]: r for r in rows if r["stage"] == 0}
    print("\n## ZeRO stages, 2 ranks (gloo, CPU): per-rank optimizer memory\n")
    print("| stage | rank | params | Adam moments MiB | ratio vs stage 0 | + fp32 masters MiB | peak RSS MiB | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["moments"] / base[r["rank"]]["moments"]
        print(f"| {r['stage']} | {r['rank']} | {r['params']:,} | {r['moments'] / 2**20:.1f} | {ratio:.2f} | "
              f"{(r['moments'] + r['masters']) / 2**20:.1f} | {r['rss_mib']:.0f} | "
              f"{'-' if r['step_s'] is None else format(r['step_s'], '.3f')} |")


if __name__ == "__main__":
    main()
