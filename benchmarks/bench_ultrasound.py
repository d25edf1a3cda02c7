"""Ultrasound multi-task model throughput: training and inference images/s, data loading vs model time.

Command (CPU, a few minutes)::

    .venv/bin/python benchmarks/bench_ultrasound.py --threads 1

Measured side by side in one process for each configuration (tiny: tinynet_e at 64x64, the CI recipe;
full: EfficientNet-B4 at 256x256 over all 27 heads, the ``ultrasound-mtl`` recipe):

- training: forward + backward + AdamW step of the multi-task objective on mixed-task batches;
- inference: ``torch.no_grad`` forward of the routed heads;
- data: building one batch of the same planned images from the resized-array cache against decoding
  them from PNG and resizing them (what a loader without the cache does), both without augmentation;
  then the cached batch with augmentation (zoom/shift/flip resampling, intensity jitter), as a share
  of one training step.

Peak memory: ``resource.getrusage`` max RSS after each configuration (the process's high-water mark,
so later rows include earlier ones; configurations run smallest first). On a CUDA machine the model
columns also run on the GPU (``--device cuda``).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.modalities.ultrasound.augment import fit_geometry, warp  # noqa: E402
from foundation.modalities.ultrasound.dataset import (  # noqa: E402
    UltrasoundDatasetConfig,
    UltrasoundDataset,
    collate_batches,
)
from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus  # noqa: E402
from foundation.modalities.ultrasound.images import read_image  # noqa: E402
from foundation.modalities.ultrasound.model import UltrasoundMTL, UltrasoundMTLConfig  # noqa: E402
from foundation.modalities.ultrasound.objective import MultiTaskObjective, MultiTaskObjectiveConfig  # noqa: E402
from foundation.modalities.ultrasound.tasks import task_table  # noqa: E402

CONFIGS = {
    "tiny": dict(backbone="tinynet_e", size=64, batch=8, fpn_dim=32, head_dim=16, iters=10),
    "full": dict(backbone="efficientnet_b4", size=256, batch=4, fpn_dim=128, head_dim=64, iters=3),
}


def _timed(fn, iters: int, sync) -> float:
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def run(name: str, cfg: dict, csv_dir: Path, cache: Path, device: torch.device) -> dict[str, float]:
    data_cfg = UltrasoundDatasetConfig(source=str(csv_dir), image_size=cfg["size"], batch_size=cfg["batch"],
                                    mixed_tasks=True, cache_dir=str(cache))
    UltrasoundDataset.prepare(data_cfg)
    data = UltrasoundDataset(data_cfg)
    torch.manual_seed(0)
    model = UltrasoundMTL(UltrasoundMTLConfig(backbone=cfg["backbone"], fpn_dim=cfg["fpn_dim"],
                                              head_dim=cfg["head_dim"])).to(device)
    objective = MultiTaskObjective(MultiTaskObjectiveConfig()).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(objective.parameters()), 1e-4)
    batch = {k: v.to(device) for k, v in data[0].items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step() -> None:
        loss, _ = objective(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer() -> None:
        model(batch["image"], batch["task"])

    plan = data.planner.plan()

    def cached_batch() -> None:
        collate_batches([data.sample(j, train=False) for j in plan])

    def augmented_batch() -> None:
        collate_batches([data.sample(j, train=True) for j in plan])

    def decoded_batch() -> None:
        for j in plan:
            img = torch.from_numpy(read_image(data.records[j].image)).permute(2, 0, 1)
            g = fit_geometry(img.shape[1], img.shape[2], cfg["size"], False)
            warp(img, g)

    model.train()
    t_train = _timed(train_step, cfg["iters"], sync)
    model.eval()
    t_infer = _timed(infer, cfg["iters"], sync)
    t_cached = _timed(cached_batch, 20, lambda: None)
    t_aug = _timed(augmented_batch, 20, lambda: None)
    t_decoded = _timed(decoded_batch, 20, lambda: None)
    B = cfg["batch"]
    return {"train_ips": B / t_train, "infer_ips": B / t_infer, "train_ms": 1e3 * t_train,
            "cached_ms": 1e3 * t_cached, "aug_ms": 1e3 * t_aug, "decoded_ms": 1e3 * t_decoded,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default="tiny,full")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="us_bench_"))
    csv_dir = make_demo_corpus(work / "demo", task_table(), images_per_task=8, seed=0, min_size=200, max_size=320)
    rows = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        r = run(name, cfg, csv_dir, work / "cache", device)
        rows.append((name, cfg, r))
        print(name, r, flush=True)
    print(f"\n27 tasks, mixed-task batches, device {device}, {args.threads} thread(s)\n")
    print("| config | batch | train img/s | infer img/s | infer / train | data: cached ms/batch | "
          "data: decode ms/batch | decode / cached | cached + augment ms/batch | (cached + augment) / train step "
          "| peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cfg, r in rows:
        print(f"| {name} ({cfg['backbone']}, {cfg['size']}px) | {cfg['batch']} | {r['train_ips']:.1f} | "
              f"{r['infer_ips']:.1f} | {r['infer_ips'] / r['train_ips']:.1f}x | {r['cached_ms']:.1f} | "
              f"{r['decoded_ms']:.1f} | {r['decoded_ms'] / r['cached_ms']:.1f}x | {r['aug_ms']:.1f} | "
              f"{r['aug_ms'] / r['train_ms']:.3f} | {r['peak_mib']:.0f} |")
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout.strip()
    print(f"\nMachine: {cpu}; 2 cores shared with other jobs.")


if __name__ == "__main__":
    main()
