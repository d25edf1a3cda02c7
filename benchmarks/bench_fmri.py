"""SLIM-Brain memory claim: a pretraining step on top-k windows with 70% unit deletion vs all windows, no deletion.

Commands::

    .venv/bin/python benchmarks/bench_fmri.py                         # CPU, tiny geometry (slim-brain-tiny)
    .venv/bin/python benchmarks/bench_fmri.py --device cuda --size released --frames 200 --scans 1

Both rows use the same SlimBrain model (recipe ``slim-brain-tiny`` or ``slim-brain``),
the same scans (random z-scored volumes, every mask unit foreground) and one
optimizer step (forward, backward, AdamW, EMA update):

* ``slim``: k = ``--top-k`` windows per scan; the context encoder sees 30% of the
  mask units (70% deleted), the EMA target encoder all units without gradients,
  the predictor the deleted units' positions (the JEPA objective of the recipe);
* ``dense``: every non-overlapping window of each scan; the context encoder sees
  all units and regresses (smooth-L1) the EMA target encoder's layer-normed
  features of the same tokens: the voxel-level baseline, with no deletion.

Peak memory: on CPU the increase of the process's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over the RSS before the step, each
mode in a fresh subprocess; on CUDA ``torch.cuda.max_memory_allocated`` minus the
allocation before the step. Step time: median of ``--repeat`` steps after one warm-up, with
``--threads`` torch threads (default 1: on a shared machine two OpenMP threads spin against
other jobs and the step time stops measuring the model).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from foundation.config import load_recipe
from foundation.modalities.fmri.jepa import JepaObjective
from foundation.modalities.fmri.slim_brain import SlimBrain


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_mode(mode: str, size: str, device: str, scans: int, frames: int, top_k: int, repeat: int) -> dict:
    recipe = load_recipe("slim-brain-tiny" if size == "tiny" else "slim-brain")
    torch.manual_seed(0)
    model = SlimBrain(recipe.model.config).to(device)
    obj = JepaObjective(recipe.objective.config)
    W = recipe.model.config.input_size[0]
    n_windows = frames // W
    per_scan = top_k if mode == "slim" else n_windows
    B = scans * per_scan
    x = torch.randn(B, 1, *recipe.model.config.input_size, device=device)
    U = model.encoder.n_units
    fg = torch.ones(B, U, dtype=torch.bool, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        if mode == "slim":
            loss, _ = obj(model, {"x": x, "unit_fg": fg})
        else:
            h, _ = model.encoder.forward_units(x)
            with torch.no_grad():
                t, _ = model.target.forward_units(x)
                t = F.layer_norm(t, t.shape[-1:])
            loss = F.smooth_l1_loss(h, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.on_step_end(1)

    step()  # warm-up: optimizer state exists from here on, in both modes
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_kib() * 1024
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"mode": mode, "windows": B, "tokens_in": B * U * model.encoder.unit_tokens,
            "context_tokens": B * (round(U * 0.3) if mode == "slim" else U) * model.encoder.unit_tokens,
            "peak_bytes": peak, "step_s": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="tiny", choices=["tiny", "released"])
    ap.add_argument("--scans", type=int, default=2)
    ap.add_argument("--frames", type=int, default=96, help="frames per scan")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--mode", default="", help=argparse.SUPPRESS)  # internal: one mode in this process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.size, args.device, args.scans, args.frames, args.top_k, args.repeat)))
        return
    rows = {}
    for mode in ("dense", "slim"):
        cmd = [sys.executable, __file__, "--mode", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "mode"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:  # e.g. the dense step does not fit the device: say so in the table
            err = (out.stderr.strip().splitlines() or ["exit status %d" % out.returncode])[-1]
            print(f"{mode}: failed: {err}", file=sys.stderr)
            rows[mode] = {"mode": mode, "failed": err[:120]}
        else:
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    d, s = rows["dense"], rows["slim"]
    unit = "CUDA max_memory_allocated" if args.device == "cuda" else "peak RSS increase (ru_maxrss)"
    print(f"SLIM-Brain step, {args.size} geometry, {args.scans} scan(s) x {args.frames} frames, top-k {args.top_k}, {args.device}; "
          f"memory = {unit}, time = median of {args.repeat} steps, {args.threads} thread(s)\n")
    print("| mode | windows | encoder input tokens | context-encoder tokens | peak memory (MiB) | step time (s) |")
    print("|---|---|---|---|---|---|")
    for r in (d, s):
        if "failed" in r:
            print(f"| {r['mode']} | failed: {r['failed']} | | | | |")
        else:
            print(f"| {r['mode']} | {r['windows']} | {r['tokens_in']} | {r['context_tokens']} | {r['peak_bytes'] / 2**20:.1f} | {r['step_s']:.3f} |")
    if "failed" in d or "failed" in s:
        return
    print(f"| slim / dense | {s['windows'] / d['windows']:.2f} | {s['tokens_in'] / d['tokens_in']:.2f} | "
          f"{s['context_tokens'] / d['context_tokens']:.2f} | {s['peak_bytes'] / d['peak_bytes']:.2f} | {s['step_s'] / d['step_s']:.2f} |")


if __name__ == "__main__":
    main()
