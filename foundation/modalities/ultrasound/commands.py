"""Evaluate a trained ultrasound multi-task model, or write a challenge submission, from the command line.

Evaluate an export (or a Hub id) on the validation split of a labelled CSV folder::

    python -m foundation.modalities.ultrasound.commands evaluate --model runs/us/export \\
        --data-root data/csv_files --out runs/us/eval

writes ``metrics.json`` (per task and per type), ``results.md`` and ``predictions_<type>.png``.
Write a submission for an (unlabelled) test CSV folder, holding any subset of the tasks::

    python -m foundation.modalities.ultrasound.commands submit --model runs/us/export \\
        --data-root test/csv_files --out submission/

``--image-size`` and ``--keep-aspect`` must match training (defaults: the recipe's 256, stretched).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from foundation.modalities.ultrasound.csv_reader import read_csv_folder
from foundation.modalities.ultrasound.dataset import split_records
from foundation.modalities.ultrasound.evaluate import evaluate, results_markdown, save_prediction_grids, summarize
from foundation.modalities.ultrasound.model import UltrasoundMTL
from foundation.modalities.ultrasound.predict import predict
from foundation.modalities.ultrasound.submission import write_submission

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundation.modalities.ultrasound.commands",
                                 description="evaluate or submit an ultrasound multi-task model")
    ap.add_argument("command", choices=("evaluate", "submit"))
    ap.add_argument("--model", required=True, help="export folder (save_pretrained layout) or Hub id")
    ap.add_argument("--data-root", required=True, help="folder of the challenge CSVs")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--keep-aspect", action="store_true")
    ap.add_argument("--split", choices=("val", "all"), default="val", help="evaluate: patient-disjoint val split or all rows")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    model = UltrasoundMTL.from_pretrained(args.model).to(args.device)
    labelled = args.command == "evaluate"
    records = read_csv_folder(args.data_root, model.table, labelled=labelled)
    if labelled and args.split == "val":
        _, val = split_records(records, args.val_fraction, args.split_seed)
        records = [records[i] for i in val]
    preds = predict(model, records, image_size=args.image_size, keep_aspect=args.keep_aspect, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "submit":
        paths = write_submission(preds, model.table, args.out)
        print(f"wrote {len(preds)} predictions: {', '.join(str(p) for p in paths.values())}")
        return 0
    per_task = evaluate(preds, model.table)
    (args.out / "metrics.json").write_text(json.dumps({"per_task": per_task,
                                                       "per_type": summarize(per_task, model.table)}, indent=1))
    table = results_markdown(per_task, model.table)
    (args.out / "results.md").write_text(table)
    save_prediction_grids(preds, model.table, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
