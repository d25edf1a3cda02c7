"""Multi-task vs single-task models, and each loss-balancing mode vs uniform, on the ultrasound demo corpus.

Command (CPU, about 10 minutes on 2 shared cores)::

    .venv/bin/python benchmarks/ultrasound_study.py --steps-per-task 40 --out benchmarks/results_ultrasound.md

What runs (same backbone, heads, optimizer groups and warmup-cosine schedule as the engine, in one
process without DeepSpeed so that every run sees identical data order; one seed):

- ``single``: one model per task (the model holds only that task's head), ``steps-per-task`` steps each;
- ``mtl-uniform``: one model for all tasks, one random task per batch, equal weights (the published
  baseline), ``steps-per-task x tasks`` steps, so every task sees as many images as its single model;
- ``mtl-mixed``: the same with mixed-task batches (the reference for the balancers below);
- ``uncertainty``, ``dwa``, ``gradnorm``: mixed-task batches with that balancer.

Tasks: two of each type (keypoints FUGC, IUGC; classification breast_2cls, fetal_head_pos_cls;
detection thyroid_nodule_det, uterine_fibroid_det; segmentation fetal_head, cardiac_multi), 48 demo
images each, patient-disjoint 75/25 split; metrics on the validation images with the official
definitions. Peak memory: ``resource.getrusage`` max RSS of the process (CPU).
"""
from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.config import TrainConfig  # noqa: E402
from foundation.modalities.ultrasound.dataset import UltrasoundDatasetConfig, UltrasoundDataset  # noqa: E402
from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus  # noqa: E402
from foundation.modalities.ultrasound.evaluate import evaluate  # noqa: E402
from foundation.modalities.ultrasound.model import UltrasoundMTL, UltrasoundMTLConfig  # noqa: E402
from foundation.modalities.ultrasound.objective import MultiTaskObjective, MultiTaskObjectiveConfig  # noqa: E402
from foundation.modalities.ultrasound.predict import predict  # noqa: E402
from foundation.modalities.ultrasound.tasks import task_table  # noqa: E402
from foundation.pretrain.components import TrainModule  # noqa: E402
from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer  # noqa: E402

TASKS = ("FUGC", "IUGC", "breast_2cls", "fetal_head_pos_cls", "thyroid_nodule_det", "uterine_fibroid_det",
         "fetal_head", "cardiac_multi")
HEADLINE = {"segmentation": "dice", "classification": "accuracy", "detection": "iou", "regression": "mre"}
HIGHER = {"dice": True, "accuracy": True, "iou": True, "mre": False}


def train_one(tasks: tuple[str, ...], csv_dir: Path, cache: Path, steps: int, balancing: str, mixed: bool,
              args: argparse.Namespace) -> tuple[UltrasoundMTL, float]:
    torch.manual_seed(args.seed)
    data_cfg = UltrasoundDatasetConfig(
        source=str(csv_dir), tasks=tasks, image_size=args.size, batch_size=args.batch, mixed_tasks=mixed,
        cache_dir=str(cache / "-".join(tasks)), split="train")
    UltrasoundDataset.prepare(data_cfg)  # one cache per task set serves the train and val splits
    data = UltrasoundDataset(data_cfg)
    model = UltrasoundMTL(UltrasoundMTLConfig(backbone=args.backbone, tasks=tasks, fpn_dim=32, head_dim=16))
    objective = MultiTaskObjective(MultiTaskObjectiveConfig(tasks=tasks, balancing=balancing, dwa_period=20))
    train = TrainConfig(steps=steps, lr=args.lr, warmup_steps=max(1, steps // 20), weight_decay=1e-4,
                        betas=(0.9, 0.999))
    module = TrainModule(model, objective)
    opt = build_optimizer(module, train)
    sched = WarmupCosineScheduler(opt, train)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        loss, _ = module(data[step])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        module.on_step_end(step)
    return model, time.perf_counter() - t0


def scores(model: UltrasoundMTL, csv_dir: Path, cache: Path, tasks: tuple[str, ...], args) -> dict[str, float]:
    val = UltrasoundDataset(UltrasoundDatasetConfig(source=str(csv_dir), tasks=tasks, image_size=args.size,
                                                 cache_dir=str(cache / "-".join(tasks)), split="val"))
    per_task = evaluate(predict(model, val.records, image_size=args.size), model.table, rules="strict")  # negatives scored
    return {t: per_task[t][HEADLINE[model.table[t].type]] for t in tasks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-per-task", type=int, default=40)
    ap.add_argument("--images-per-task", type=int, default=48)
    ap.add_argument("--backbone", default="tinynet_e")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write the tables to")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = task_table(TASKS)
    work = Path(tempfile.mkdtemp(prefix="us_study_"))
    csv_dir = make_demo_corpus(work / "demo", table, images_per_task=args.images_per_task, seed=args.seed)
    cache = work / "cache"
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    single: dict[str, float] = {}
    t_single = 0.0
    for tid in TASKS:
        model, sec = train_one((tid,), csv_dir, cache, args.steps_per_task, "static", False, args)
        single.update(scores(model, csv_dir, cache, (tid,), args))
        t_single += sec
        print(f"single {tid}: {single[tid]:.3f} ({sec:.0f}s)", flush=True)
    results["single"], seconds["single"] = single, t_single
    steps = args.steps_per_task * len(TASKS)
    for name, balancing, mixed in (("mtl-uniform", "static", False), ("mtl-mixed", "static", True),
                                   ("uncertainty", "uncertainty", True), ("dwa", "dwa", True),
                                   ("gradnorm", "gradnorm", True)):
        model, sec = train_one(TASKS, csv_dir, cache, steps, balancing, mixed, args)
        results[name], seconds[name] = scores(model, csv_dir, cache, TASKS, args), sec
        print(f"{name}: {results[name]} ({sec:.0f}s)", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs = list(results)
    lines = [f"Tasks: {len(TASKS)} (2 per type), {args.images_per_task} demo images each (75/25 patient split), "
             f"{args.backbone} {args.size}x{args.size}, batch {args.batch}, lr {args.lr} (heads and FPN 10x), "
             f"{args.steps_per_task} steps per task (single) / {steps} steps (multi-task), seed {args.seed}.", "",
             "| task | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for tid in TASKS:
        metric = HEADLINE[table[tid].type]
        lines.append(f"| {tid} | {metric} {'↑' if HIGHER[metric] else '↓'} | "
                     + " | ".join(f"{results[r][tid]:.3f}" for r in runs) + " |")
    for kind, metric in HEADLINE.items():
        ids = [t for t in TASKS if table[t].type == kind]
        lines.append(f"| **mean {kind}** | {metric} | "
                     + " | ".join(f"{sum(results[r][t] for t in ids) / len(ids):.3f}" for r in runs) + " |")
    def better(r: str, t: str) -> bool:
        a, b = results[r][t], single[t]
        return a > b if HIGHER[HEADLINE[table[t].type]] else a < b

    lines.append("| better than single | | " + " | ".join(
        "-" if r == "single" else f"{sum(better(r, t) for t in TASKS)}/{len(TASKS)}" for r in runs) + " |")
    lines.append("| train seconds | | " + " | ".join(f"{seconds[r]:.0f}" for r in runs) + " |")
    lines.append("")
    lines.append(f"Peak RSS of the process: {peak:.0f} MiB (resource.getrusage).")
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout.strip()
    lines.append(f"Machine: {cpu or platform.processor()}, {args.threads} thread(s), 2 cores shared with other jobs.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
