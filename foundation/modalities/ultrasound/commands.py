"""Evaluate a trained ultrasound multi-task model, or write a challenge submission, from the command line.

Evaluate an export (or a Hub id) on the validation split of a labelled CSV folder::

    python -m foundation.modalities.ultrasound.commands evaluate --model runs/us/export \\
        --data-root data/train --out runs/us/eval

writes ``metrics.json`` (``{rules: {per_task, per_type}}``; NaN written as null), ``results.md`` (a row
per task and rule set, the ``rules`` column naming which) and ``predictions_<type>.png``.
``--rules official`` gives the challenge evaluator's numbers, ``--rules strict`` the suite's stricter
ones, ``--rules both`` (default) both side by side (see :mod:`~foundation.modalities.ultrasound.evaluate`).
Write a submission for an (unlabelled) test CSV folder, holding any subset of the tasks::

    python -m foundation.modalities.ultrasound.commands submit --model runs/us/export \\
        --data-root test --out submission/

``--data-root`` is the ``csv_files`` folder or, as in the official scripts, the folder above it.

``--image-size`` and ``--keep-aspect`` must match training (defaults: the recipe's 256, stretched).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from foundation.atomic import atomic_write_json, atomic_write_text
from foundation.modalities.ultrasound.csv_reader import read_csv_folder
from foundation.modalities.ultrasound.dataset import split_records
from foundation.modalities.ultrasound.evaluate import (
    RULES,
    evaluate,
    results_markdown,
    save_prediction_grids,
    summarize,
)
from foundation.modalities.ultrasound.model import UltrasoundMTL
from foundation.modalities.ultrasound.predict import predict
from foundation.modalities.ultrasound.submission import write_submission

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundation.modalities.ultrasound.commands",
                                 description="evaluate or submit an ultrasound multi-task model")
    ap.add_argument("command", choices=("evaluate", "submit"))
    ap.add_argument("--model", required=True, help="export folder (save_pretrained layout) or Hub id")
    ap.add_argument("--data-root", required=True, help="the challenge's csv_files folder or the folder above it")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--keep-aspect", action="store_true")
    ap.add_argument("--split", choices=("val", "all"), default="val", help="evaluate: patient-disjoint val split or all rows")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--rules", choices=(*RULES, "both"), default="both",
                    help="evaluate: official (the challenge evaluator's rules), strict (the suite's) or both")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    model = UltrasoundMTL.from_pretrained(args.model).to(args.device)
    labelled = args.command == "evaluate"
    records = read_csv_folder(args.data_root, model.table, labelled=labelled,
                              missing_points="unknown" if labelled else "error")
    if labelled and args.split == "val":
        _, val = split_records(records, args.val_fraction, args.split_seed)
        records = [records[i] for i in val]
    preds = predict(model, records, image_size=args.image_size, keep_aspect=args.keep_aspect, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "submit":
        paths = write_submission(preds, model.table, args.out)
        print(f"wrote {len(preds)} predictions to {args.out}: {', '.join(p for p in paths if p != 'masks')} and "
              f"{len(paths['masks'])} masks")
        return 0
    rule_sets = RULES if args.rules == "both" else (args.rules,)
    results = {rules: evaluate(preds, model.table, rules) for rules in rule_sets}
    atomic_write_json(args.out / "metrics.json", _nan_to_none(
        {rules: {"per_task": per_task, "per_type": summarize(per_task, model.table, rules)}
         for rules, per_task in results.items()}))
    table = results_markdown(results, model.table)
    atomic_write_text(args.out / "results.md", table)
    save_prediction_grids(preds, model.table, args.out)
    print(table)
    return 0


def _nan_to_none(obj: object) -> object:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


if __name__ == "__main__":
    raise SystemExit(main())
