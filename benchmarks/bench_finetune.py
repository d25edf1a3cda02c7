"""Linear probe vs LoRA vs full fine-tuning (and the other methods) of one pretrained model on a labelled task.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_finetune.py \
        --pretrain tests/fixtures/recipes/toy-mae.yaml --finetune tests/fixtures/recipes/toy-classify.yaml
    PYTHONPATH=. .venv/bin/python benchmarks/bench_finetune.py --pretrain deeperbrain-tiny \
        --finetune deeperbrain-tiny-probe --targets attn.qkv attn.proj mlp.fc1 mlp.fc2

Pretrains the first recipe with the engine (one process), exports it, then fine-tunes the export with each
method through `foundation.finetune.runner.run_finetune` on the same held-out split. Prints one table:
held-out metrics, trainable parameters, wall time and peak RSS (ru_maxrss, process so far).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from foundation.config import load_recipe
from foundation.finetune.report import markdown_table
from foundation.finetune.runner import METHODS, FinetuneOptions, run_finetune
from foundation.pretrain.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain", required=True, help="recipe to pretrain")
    ap.add_argument("--finetune", required=True, help="labelled recipe (objective: supervised)")
    ap.add_argument("--methods", nargs="*", default=["linear-probe", "lora", "full"], choices=METHODS)
    ap.add_argument("--targets", nargs="*", default=[], help="LoRA/Dopamine target suffixes")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override of the pretrain recipe")
    ap.add_argument("--ft-set", dest="ft_overrides", action="append", default=[], help="override of the finetune recipe")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pre = load_recipe(args.pretrain, args.overrides + ["train.progress_bar=false"])
        t0 = time.perf_counter()
        result = Engine(pre, Path(tmp) / "pretrain").run()
        print(f"pretrained {pre.name} for {result.step} steps in {time.perf_counter() - t0:.0f} s")
        ft = load_recipe(args.finetune, args.ft_overrides + ["train.progress_bar=false"])
        for method in args.methods:
            t0 = time.perf_counter()
            res = run_finetune(ft, str(result.export_dir), Path(tmp) / method,
                               FinetuneOptions(method=method, targets=tuple(args.targets)))
            m = res["metrics"]
            rows.append({"method": method, **{k: m[k] for k in m if k in ("balanced_accuracy", "cohen_kappa",
                                                                          "weighted_f1", "auroc", "r2", "mae")},
                         "trainable params": res["trainable_params"], "seconds": time.perf_counter() - t0,
                         "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    print()
    print(markdown_table(rows, floatfmt=".3f"))


if __name__ == "__main__":
    main()
