"""DeeperBrain against the field's published EEG architectures under one protocol (`foundation benchmark`).

    python benchmarks/bench_published.py                       # 5-fold, linear probe and LoRA, recipe's 300 steps
    python benchmarks/bench_published.py --steps 100 --out runs/bench-published

On the EEG demo corpus (`deeperbrain-tiny-probe`: rest / motor / memory, 12 subjects), subject-grouped,
class-stratified 5-fold cross-validation (the same folds for every row) of:

* DeeperBrain pretrained by the demo recipe (`foundation pretrain --recipe deeperbrain-tiny`, one process),
* DeeperBrain at random init (the same architecture, seed 0, saved with `save_pretrained`),
* the imported architectures `arch:labram`, `arch:cbramod`, `arch:eegpt`, `arch:biot`, `arch:bendr` at random
  init (no weights can be downloaded here). A spec the installed suite cannot load yet is skipped with the
  reason printed; the others run.

Each row runs as its own `foundation benchmark` process into one output folder (finished cells are kept, so a
rerun resumes), so its peak resident memory is that process's (`os.wait4`). Printed: parameters, LoRA
training samples/s (median over steps and folds), peak RSS, linear-probe and LoRA balanced accuracy (mean over
subjects, 95% bootstrap interval), wall time, the machine load, then the benchmark's own results.md (paired
Wilcoxon tests between every pair of rows).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "deeperbrain-tiny-probe"
METHODS = ("linear-probe", "lora")
ARCH_ROWS = [(f"{name} (random init)", f"arch:{name}") for name in ("labram", "cbramod", "eegpt", "biot", "bendr")]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "foundation.cli", *args]


def _run(cmd: list[str]) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit status, wall seconds, peak RSS of the process in MiB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def _pretrained(out: Path) -> Path:
    export = out / "pretrain" / "export"
    if not (export / "config.json").is_file():
        code, secs, _ = _run(_cli("pretrain", "--recipe", "deeperbrain-tiny", "--output-dir", str(out / "pretrain"),
                                  "--set", "train.progress_bar=false"))
        if code != 0:
            raise SystemExit(f"pretraining deeperbrain-tiny failed (exit {code})")
        print(f"pretrained deeperbrain-tiny in {secs:.0f} s -> {export}", flush=True)
    return export


def _random_init(out: Path) -> Path:
    from foundation.config import load_recipe
    from foundation.registry import MODELS

    folder = out / "random-init"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        MODELS.get("deeperbrain")(load_recipe("deeperbrain-tiny").model.config).save_pretrained(folder)
    return folder


def _available(spec: str, recipe) -> str | None:
    """None when ``finetune --from spec`` passes its checks with ``recipe``; else the reason it does not."""
    from foundation.errors import FoundationError
    from foundation.finetune.runner import check_base

    try:
        check_base(recipe, spec)
    except FoundationError as err:
        return str(err)
    return None


def _params(spec: str) -> int | None:
    import foundation
    from foundation.errors import FoundationError

    try:
        model = foundation.load(spec)
    except (FoundationError, OSError):
        return None
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-published", help="working folder (pretraining, benchmark)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="train.steps of LoRA (default: the recipe's)")
    args = parser.parse_args()
    from foundation.config import load_recipe

    out = (ROOT / args.out).resolve()
    sets = ["--set", "train.progress_bar=false"] + (["--set", f"train.steps={args.steps}"] if args.steps else [])
    recipe = load_recipe(RECIPE, [s for s in sets if s != "--set"])
    rows = [("deeperbrain pretrained (demo recipe)", str(_pretrained(out))),
            ("deeperbrain (random init)", str(_random_init(out))), *ARCH_ROWS]
    bench = out / "benchmark"
    measured = {}
    for label, spec in rows:
        if (reason := _available(spec, recipe)) is not None:
            print(f"skipped {label} ({spec}): {reason}", flush=True)
            continue
        code, secs, rss = _run(_cli("benchmark", "--models", f"{label}={spec}", "--recipe", RECIPE, *sets,
                                    "--methods", *METHODS, "--folds", str(args.folds), "--output-dir", str(bench)))
        if code != 0:
            print(f"skipped {label} ({spec}): its benchmark process failed (exit {code}); see the lines above",
                  flush=True)
            continue
        measured[label] = (spec, secs, rss)
    if not measured:
        raise SystemExit("no row ran")
    code, _, _ = _run(_cli("benchmark", "--models", *[f"{lab}={s}" for lab, (s, _, _) in measured.items()],
                           "--recipe", RECIPE, *sets, "--methods", *METHODS, "--folds", str(args.folds),
                           "--output-dir", str(bench)))  # every cell kept: the joint report and pairwise tests
    report = json.loads((bench / "results.json").read_text())
    by_row = {(r["model"], r["method"]): r for r in report["rows"]}
    print(f"\n{RECIPE}, {args.folds}-fold subject-grouped CV, LoRA steps: {recipe.train.steps}; "
          f"load: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs; torch {torch.__version__}\n")
    print("| model | spec | parameters | LoRA train samples/s | peak RSS (MiB) | linear-probe BA [95% CI] | "
          "LoRA BA [95% CI] | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, (spec, secs, rss) in measured.items():
        probe, lora = by_row.get((label, "linear-probe")), by_row.get((label, "lora"))
        sps = lora and lora.get("train_samples_per_s")
        n = _params(spec)
        print(f"| {label} | `{spec if spec.startswith('arch:') else Path(spec).name}` | "
              f"{n if n is not None else 'n/a'} | {f'{sps:.0f}' if sps else 'n/a'} | {rss:.0f} | "
              f"{probe['balanced_accuracy']['text'] if probe else 'n/a'} | "
              f"{lora['balanced_accuracy']['text'] if lora else 'n/a'} | {secs:.0f} |")
    print(f"\nbenchmark folder: {bench}\n")
    print((bench / "results.md").read_text())


if __name__ == "__main__":
    main()
