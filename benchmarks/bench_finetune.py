"""Linear probe vs LoRA vs full fine-tuning (and the other methods) of one pretrained model on a labelled task.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_finetune.py \
        --pretrain tests/fixtures/recipes/toy-mae.yaml --finetune tests/fixtures/recipes/toy-classify.yaml
    PYTHONPATH=. .venv/bin/python benchmarks/bench_finetune.py --pretrain deeperbrain-tiny \
        --finetune deeperbrain-tiny-probe --steps 60 --seeds 0 1 2
    PYTHONPATH=. .venv/bin/python benchmarks/bench_finetune.py --pretrain slim-brain-tiny \
        --finetune slim-brain-tiny-probe --steps 60 --seeds 0 1 2
    PYTHONPATH=. .venv/bin/python benchmarks/bench_finetune.py --pretrain ultrasound-mtl-tiny \
        --finetune ultrasound-mtl-tiny-probe --steps 60 --seeds 0 1 2

Pretrains the first recipe with the engine (one process), exports it, then fine-tunes the export with each
method (and, for lora/full/dopamine, each ``--head-inits`` start of the new head: ``probe`` = LP-FT, ``random``)
through `foundation.finetune.runner.run_finetune` on the same subject-disjoint held-out split
(``--split-seed``), once per training seed (``--seeds``: ``train.seed`` of the fine-tune; the linear probe's
fit is seeded alike). Prints one table: held-out metrics (mean and, over several seeds, the standard
deviation), trainable parameters, wall time per run and peak RSS (ru_maxrss, process so far).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from foundation.config import load_recipe
from foundation.eval.report import markdown_table
from foundation.finetune.strategies import make_strategy
from foundation.finetune.runner import FinetuneOptions, method_names, run_finetune
from foundation.pretrain.engine import Engine
from foundation.pretrain.export import export_run

METRICS = ("balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc", "r2", "mae")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain", required=True, help="recipe to pretrain")
    ap.add_argument("--finetune", required=True, help="labelled recipe (objective: supervised)")
    ap.add_argument("--methods", nargs="*", default=["linear-probe", "lora", "full"], choices=method_names())
    ap.add_argument("--targets", nargs="*", default=[], help="adapter target suffixes (default: the method's preset)")
    ap.add_argument("--adapter-set", dest="adapter_set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of every adapter method's config (value read as YAML), e.g. r=4")
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning optimizer steps (0: the recipe's train.steps)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="fine-tuning seeds (train.seed), one run each")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the held-out subject split")
    ap.add_argument("--head-inits", nargs="*", default=["probe"], choices=["probe", "random"],
                    help="new-head starts of lora/full/dopamine, one row each (probe = LP-FT)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override of the pretrain recipe")
    ap.add_argument("--ft-set", dest="ft_overrides", action="append", default=[], help="override of the finetune recipe")
    args = ap.parse_args()
    adapter = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.adapter_set)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pre = load_recipe(args.pretrain, args.overrides + ["train.progress_bar=false"])
        t0 = time.perf_counter()
        result = Engine(pre, Path(tmp) / "pretrain").run()
        export_dir = export_run(pre, result)
        print(f"pretrained {pre.name} for {result.step} steps in {time.perf_counter() - t0:.0f} s")
        steps = [f"train.steps={args.steps}"] if args.steps else []
        runs = [(m, h) for m in args.methods for h in (args.head_inits if make_strategy(m).new_head else ["-"])]
        for method, head_init in runs:
            metrics: dict[str, list[float]] = {}
            seconds, trainable = [], 0
            for seed in args.seeds:
                ft = load_recipe(args.finetune, args.ft_overrides + steps + [f"train.seed={seed}",
                                                                           "train.progress_bar=false"])
                t0 = time.perf_counter()
                res = run_finetune(ft, str(export_dir), Path(tmp) / f"{method}-{head_init}-{seed}",
                                   FinetuneOptions(method=method, targets=tuple(args.targets), adapter=adapter,
                                                   split_seed=args.split_seed,
                                                   head_init="probe" if head_init == "-" else head_init))
                seconds.append(time.perf_counter() - t0)
                trainable = res["trainable_params"]
                for k in METRICS:
                    if k in res["metrics"]:
                        metrics.setdefault(k, []).append(res["metrics"][k])
                print(f"{method} (head {head_init}) seed {seed}: {res['metrics']} ({seconds[-1]:.0f} s)", flush=True)
            rows.append({"method": method, "head init": head_init, **{k: _cell(v) for k, v in metrics.items()},
                         "trainable params": trainable, "seconds / run": statistics.mean(seconds),
                         "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        print(f"\n{ft.name}: {len(args.seeds)} seed(s), {ft.train.steps} fine-tuning steps, split seed {args.split_seed}")
    print()
    print(markdown_table(rows, floatfmt=".3f"))


if __name__ == "__main__":
    main()
