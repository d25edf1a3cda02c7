"""Sparsity used at inference: accuracy vs skipped MLP multiply-adds vs wall time (issue 20, part 3).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparse_inference.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_sparse_inference.py --models deeperbrain-tiny:relu --levels 0.5

1. Pretrains each ``--models`` entry (``recipe:activation``) with the engine (``Engine(load_recipe(recipe,
   overrides), out).run()``, ``--steps`` steps) and exports it.
2. For dense and for every criterion x target sparsity (``chess``: per-channel thresholds calibrated on the probe's
   training split; ``wina``: weight-informed gating of fc2's inputs; ``wina-io``: of fc1's and fc2's inputs),
   swaps the encoder's MLPs (:func:`foundation.layers.sparse_mlp.apply_to_encoder`, union gather) and runs the
   suite's linear probe (``finetune_model`` with method ``linear-probe``, the runner's subject-disjoint held-out
   split): held-out balanced accuracy, and the share of the MLP multiply-adds skipped over the probe's forwards
   (token by token, and what the union gather really skipped).
3. Wall time of the encoder's ``forward_features`` per config timed (``--time-levels``), union and per-token
   gathers, relative to dense, at batch 1 and at the probe's batch (64, the feature loader's), one thread, configs
   interleaved within each repeat, median of the repeats. Peak memory: extra RSS of one forward in a fresh process (``--memory``).
4. One MLP alone at a realistic width (``--wide``: D=768, hidden 3072 by default) at T = 1, 197 and 8 x 197
   tokens: dense vs the union and per-token gathers at the same sparsities (random weights: only time and memory).

Prints markdown tables and writes ``benchmarks/figures/sparse_inference.png`` (accuracy vs skipped multiply-adds).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from foundation.config import load_recipe
from foundation.data.protocol import prepare_dataset
from foundation.eval.report import markdown_table
from foundation.finetune.features import encode, split_batch
from foundation.finetune.options import FinetuneOptions
from foundation.finetune.runner import _load_base, _num_outputs, _split, finetune_model
from foundation.layers.mlp import Mlp
from foundation.layers.sparse_mlp import SparseMlp, apply_to_encoder, calibrate_chess
from foundation.pretrain.engine import Engine
from foundation.pretrain.export import export_run
from foundation.registry import DATASETS, MODELS

PROBE_BATCH = 64  # FinetuneJob.loader's batch size: the frozen features are extracted in batches of 64


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``: resident now, ``VmHWM``: this process image's peak), bytes.

    ``VmHWM`` starts afresh at exec, unlike ``ru_maxrss``, which inherits the forking parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_child(args: list[str]) -> float:
    """Extra peak RSS (MiB) of one forward, measured in a fresh process (``--child ...``)."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> None:
    """``wide D H T mode s`` or ``encoder FOLDER NAME BATCH_FILE mode s``: print the extra peak RSS in MiB."""
    torch.set_num_threads(1)
    if argv[0] == "wide":
        D, H, T, mode, s = int(argv[1]), int(argv[2]), int(argv[3]), argv[4], float(argv[5])
        torch.manual_seed(0)
        mlp = Mlp(D, H, D, "gelu").eval()
        x = torch.randn(T, D)
        fwd = lambda: mlp(x)
        if mode != "dense":
            sp = SparseMlp(mlp, "wina", sparsity=s, mode=mode).eval()
            fwd = lambda: sp(x)
    else:
        folder, name, batch_file, mode, s = argv[1], argv[2], argv[3], argv[4], float(argv[5])
        enc = MODELS.get(name).from_pretrained(folder).eval()
        inputs = torch.load(batch_file, weights_only=True)
        if mode != "dense":
            apply_to_encoder(enc, "wina", sparsity=s, mode=mode)
        fwd = lambda: encode(enc, inputs)
    base = _status_bytes("VmRSS")
    with torch.no_grad():
        fwd()
    print(max(0, _status_bytes("VmHWM") - base) / 2**20)


def _interleaved(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, the configs interleaved within every repeat (one warm-up call each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f()
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _pretrain(recipe: str, act: str, steps: int, root: Path) -> tuple[Path, str, float]:
    pre = load_recipe(recipe, [f"model.activation={act}", f"train.steps={steps}", "train.progress_bar=false",
                               f"data.cache_dir={root / 'cache' / recipe}"])
    t0 = time.perf_counter()
    result = Engine(pre, root / f"{recipe}-{act}").run()
    return export_run(pre, result), pre.model.name, time.perf_counter() - t0


def _study(recipe: str, act: str, levels: list[float], steps: int, repeats: int, memory: bool, root: Path,
           time_levels: list[float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    export, name, pre_s = _pretrain(recipe, act, steps, root)
    probe_name = f"{recipe}-probe"
    ft = load_recipe(probe_name, ["train.progress_bar=false", f"data.cache_dir={root / 'cache' / probe_name}"])
    data_cls = DATASETS.get(ft.data.name)
    prepare_dataset(data_cls, ft.data.config)
    dataset = data_cls(ft.data.config)
    opts = FinetuneOptions(method="linear-probe")
    train, test, _ = _split(dataset, opts, "classification")
    base, _ = _load_base(dataclasses.replace(ft, model=dataclasses.replace(ft.model, name=name)), str(export), None,
                         _num_outputs(dataset, "classification"), "classification", opts.pool)
    obj = ft.objective.config
    keys = {"input_key": obj.input_key, "label_key": obj.label_key}

    def loader(data: Any, n: int) -> Any:
        return torch.utils.data.DataLoader(data, batch_size=n, collate_fn=getattr(data, "collate", None))

    calib = [split_batch(b, **keys)[0] for _, b in zip(range(2), loader(train, 16))]
    b1 = split_batch(next(iter(loader(test, 1))), **keys)[0]
    bp, yp = split_batch(next(iter(loader(test, PROBE_BATCH))), **keys)
    n_probe = len(yp)  # the held-out split may hold fewer than 64 items
    configs: list[tuple[str, float]] = [("dense", 0.0)] + [(c, s) for c in ("chess", "wina", "wina-io") for s in levels]
    rows, encoders = [], {}
    for crit, s in configs:
        model = copy.deepcopy(base)
        thr = None
        if crit == "chess":
            thr = calibrate_chess(model.encoder, calib, s, forward_fn=lambda e, b: encode(e, b))
        kw = {"thresholds": thr} if crit == "chess" else {"sparsity": s, "input_sparsity": s if crit == "wina-io" else 0}
        handle = apply_to_encoder(model.encoder, "chess" if crit == "chess" else "wina", **kw) if crit != "dense" else None
        t0 = time.perf_counter()
        res = finetune_model(model, train, test, ft, opts, root / "probe" / f"{recipe}-{act}-{crit}-{s}")
        count = handle.count() if handle else None
        label = "dense" if crit == "dense" else f"{crit} {s:.2f}"
        rows.append({"model": f"{recipe} ({act})", "config": label,
                     "balanced acc": res["metrics"]["balanced_accuracy"],
                     "skipped MACs %": 100 * count.skipped_share if count else 0.0,
                     "skipped by union gather %": 100 * count.skipped_run_share if count else 0.0,
                     "probe s": time.perf_counter() - t0})
        if crit != "dense" and not any(abs(s - t) < 1e-9 for t in time_levels):
            continue
        for mode in ("union", "per-token") if crit != "dense" else ("dense",):
            enc = copy.deepcopy(base.encoder).eval()
            if crit != "dense":
                apply_to_encoder(enc, "chess" if crit == "chess" else "wina", mode=mode, **kw)
            encoders[(label, mode)] = enc
        print(f"{recipe} ({act}) {label}: {rows[-1]}", flush=True)
    for bname, batch in (("batch 1", b1), (f"batch {n_probe}", bp)):
        t = _interleaved({k: (lambda e=e, b=batch: encode(e, b)) for k, e in encoders.items()}, repeats)
        dense = t[("dense", "dense")]
        for row in rows:
            for mode in ("union", "per-token"):
                if (row["config"], mode) in t:
                    row[f"{bname} {mode} / dense"] = t[(row["config"], mode)] / dense
            if row["config"] == "dense":
                row[f"{bname} dense ms"] = 1000 * dense
    mem = []
    if memory:
        with tempfile.TemporaryDirectory() as tmp:
            bf = str(Path(tmp) / "batch.pt")
            torch.save(bp, bf)
            s = levels[len(levels) // 2]
            for mode in ("dense", "union", "per-token"):
                mem.append({"model": f"{recipe} ({act})", "batch": n_probe, "path": mode if mode == "dense" else
                            f"wina {s:.2f} {mode}",
                            "extra peak RSS MiB": _peak_child(["encoder", str(export), name, bf, mode, str(s)])})
    print(f"{recipe} ({act}): pretrained {steps} steps in {pre_s:.0f} s", flush=True)
    return rows, mem


def _wide(D: int, H: int, levels: list[float], repeats: int, memory: bool) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    mlp = Mlp(D, H, D, "gelu").eval()
    rows = []
    for T in (1, 197, 8 * 197):
        x = torch.randn(T, D)
        fns: dict[str, Any] = {"dense": lambda: mlp(x)}
        wrappers = {}
        for s in levels:
            for mode in ("union", "per-token"):
                wrappers[(s, mode)] = SparseMlp(mlp, "wina", sparsity=s, mode=mode).eval()
                fns[f"{s}-{mode}"] = (lambda w=wrappers[(s, mode)]: w(x))
        t = _interleaved(fns, repeats)
        for (s, mode), w in wrappers.items():
            row = {"tokens": T, "WINA sparsity": s, "gather": mode, "skipped MACs %": 100 * w.count.skipped_share,
                   "skipped by gather %": 100 * w.count.skipped_run_share, "dense ms": 1000 * t["dense"],
                   "time / dense": t[f"{s}-{mode}"] / t["dense"]}
            if memory:
                row["extra peak RSS MiB"] = _peak_child(["wide", str(D), str(H), str(T), mode, str(s)])
                row["dense extra peak RSS MiB"] = _peak_child(["wide", str(D), str(H), str(T), "dense", "0"])
            rows.append(row)
        print(f"wide MLP T={T} done", flush=True)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == m]
        dense = next(r for r in mine if r["config"] == "dense")
        ax.axhline(dense["balanced acc"], color="k", ls="--", lw=1, label="dense")
        for crit, marker in (("chess", "o"), ("wina", "s"), ("wina-io", "^")):
            pts = sorted((r["skipped MACs %"], r["balanced acc"]) for r in mine if r["config"].startswith(crit + " "))
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=crit)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("MLP multiply-adds skipped (%)")
        ax.set_ylabel("held-out balanced accuracy")
        ax.set_xlim(0, 100)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["deeperbrain-tiny:relu", "deeperbrain-tiny:gelu",
                                                    "slim-brain-tiny:relu", "slim-brain-tiny:gelu"])
    ap.add_argument("--levels", type=float, nargs="*", default=[0.5, 0.7, 0.9], help="target sparsities")
    ap.add_argument("--steps", type=int, default=30, help="pretraining steps per model")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    ap.add_argument("--wide", type=int, nargs=2, default=[768, 3072], metavar=("D", "H"))
    ap.add_argument("--time-levels", type=float, nargs="*", default=[0.7], help="sparsities whose wall time is measured")
    ap.add_argument("--skip-wide", action="store_true", help="leave out the wide MLP")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the fresh-process peak RSS")
    ap.add_argument("--plot", default="benchmarks/figures/sparse_inference.png")
    ap.add_argument("--json", default="benchmarks/out/sparse_inference.json", help="where the figures go")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load: {os.getloadavg()}", flush=True)
    rows, mem = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            recipe, _, act = spec.partition(":")
            r, m = _study(recipe, act or "gelu", args.levels, args.steps, args.repeats, args.memory, Path(tmp),
                          args.time_levels)
            rows += r
            mem += m
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).with_suffix(".partial.json").write_text(json.dumps(
                {"encoders": rows, "memory": mem}, indent=1, default=str))
            print(markdown_table(r, floatfmt=".3f"), flush=True)
    wide = [] if args.skip_wide else _wide(*args.wide, args.levels, args.repeats, args.memory)
    print(f"load: {os.getloadavg()}")
    print("\n## Encoders: linear probe on held-out subjects, skipped MLP multiply-adds, time relative to dense\n")
    print(markdown_table(rows, floatfmt=".3f"))
    if mem:
        print("\n## Encoders: extra peak RSS of one forward at the probe batch (fresh process)\n")
        print(markdown_table(mem, floatfmt=".1f"))
    if wide:
        print(f"\n## One MLP at D={args.wide[0]}, hidden {args.wide[1]} (WINA on fc2's inputs)\n")
        print(markdown_table(wide, floatfmt=".3f"))
    if rows:
        _plot(rows, Path(args.plot))
    print(f"\nplot: {args.plot}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"encoders": rows, "memory": mem,
                                                                         "wide": wide}, indent=1, default=str))


if __name__ == "__main__":
    main()
