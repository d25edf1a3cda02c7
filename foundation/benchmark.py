"""`foundation benchmark`: subject-grouped, class-stratified K-fold cross-validation of models x methods.

    foundation benchmark --models pretrained=runs/eeg/export random=runs/eeg-random --recipe deeperbrain-tiny-probe \
        --methods linear-probe lora --folds 5 --output-dir runs/bench/eeg

Every row of the table (a model, given as ``LABEL=SPEC`` or ``SPEC``, times a method) is fine-tuned and scored
on the same folds: :func:`foundation.data.splits.group_kfold` with the data set's classes and subjects
(``groups()``), so each subject is held out exactly once and every class is on both sides of every fold. A
model ``SPEC`` is whatever ``foundation finetune --from`` takes (a folder, a Hub id, ...); it is passed to
:func:`foundation.finetune.runner.run_finetune` unchanged, with the fold as its split.

Each (model, method, fold) cell runs in ``<output-dir>/cells/<label>/<method>/fold-<k>/`` (the fine-tune's own
run folder) and is finished when its ``cell.json`` (the fold's metrics and every held-out prediction) is
written, last and atomically. A rerun with the same ``--output-dir`` skips finished cells and redoes the rest,
so a stopped benchmark resumes, and models or methods can be added to a finished one (same folds). A folder
holding a benchmark of another recipe, fold count or seed is refused.

The report (:mod:`foundation.eval.protocol`): per fold and per subject balanced accuracy, Cohen's kappa and
weighted F1 (AUROC for two classes); each row's mean over subjects with a 95% bootstrap interval; paired
Wilcoxon signed-rank tests of per-subject balanced accuracy between every pair of rows (Holm-adjusted).
Written to ``results.md``, ``results.csv`` (one line per row and fold or subject), ``results.json`` and
``subject_scores.png`` (one point per subject, per row).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foundation.atomic import atomic_write_json, atomic_write_text
from foundation.config import RecipeConfig
from foundation.data.protocol import prepare_dataset
from foundation.data.splits import group_kfold
from foundation.errors import ConfigError, DataError
from foundation.eval.protocol import (
    PROTOCOL_METRICS,
    bootstrap_ci,
    paired_wilcoxon,
    per_subject_metrics,
)
from foundation.eval.report import markdown_table, save_subject_scores
from foundation.finetune.options import FinetuneOptions
from foundation.finetune.runner import run_finetune
from foundation.registry import DATASETS

__all__ = ["BenchmarkResult", "parse_models", "run_benchmark", "default_output_dir"]

MANIFEST = "benchmark.json"
CELL = "cell.json"


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` wrote: ``rows`` (one summary dict per model x method), the pairwise tests,
    the per-fold / per-subject lines of ``results.csv`` and the files."""

    rows: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    lines: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)


def parse_models(models: Sequence[str]) -> list[tuple[str, str]]:
    """``LABEL=SPEC`` or ``SPEC`` entries -> ``[(label, spec)]`` (a bare spec is its own label).

    Raises:
        ConfigError: no model, an empty label or spec, or two rows with one label.
    """
    out = []
    for entry in models:
        label, sep, spec = entry.partition("=")
        label, spec = (label.strip(), spec.strip()) if sep else (entry.strip(), entry.strip())
        if not label or not spec:
            raise ConfigError(f"--models {entry!r}: expected SPEC or LABEL=SPEC (e.g. pretrained=runs/eeg/export)")
        out.append((label, spec))
    labels = [lab for lab, _ in out]
    if not out:
        raise ConfigError("--models: name at least one model (a folder, a Hub id, or LABEL=SPEC)")
    if dup := sorted({lab for lab in labels if labels.count(lab) > 1}):
        raise ConfigError(f"--models: label(s) {dup} given twice; give each row its own label with LABEL=SPEC")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def default_output_dir(recipe_name: str) -> Path:
    """A new ``runs/benchmark/<recipe>-<UTC timestamp>`` (``-2``, ``-3``... when taken)."""
    base = Path("runs") / "benchmark" / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _check_output(out: Path, protocol: dict[str, Any]) -> None:
    """Check that ``out`` is new, empty, or a benchmark of the same protocol (which then resumes)."""
    if out.is_file():
        raise ConfigError(f"--output-dir {str(out)!r} is a file; give a folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        before = json.loads(manifest.read_text())
        diff = [k for k in sorted(set(before) | set(protocol)) if before.get(k) != protocol.get(k)]
        if diff:
            raise ConfigError(f"--output-dir {str(out)!r} holds a benchmark of another protocol ({', '.join(diff)} "
                              f"differ: {before.get(diff[0])!r} there, {protocol.get(diff[0])!r} now); its folds "
                              "and cells would not compare: give a new --output-dir")
        return
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--output-dir {str(out)!r} is not empty and holds no {MANIFEST}; a benchmark never writes "
                          "over other files: give a new or empty folder")


def _labels(dataset: Any) -> list[int]:
    """The class of every item (one pass over the items' ``label``)."""
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        labels.append(int(item["label"] if isinstance(item, dict) else item[1]))
    return labels


def _folds(dataset: Any, n_folds: int, seed: int) -> tuple[list[tuple[list[int], list[int]]], list[str], dict]:
    """The stratified group folds, every item's group, and the record of the folds for ``splits.json``."""
    if not hasattr(dataset, "groups"):
        raise DataError(f"data set {type(dataset).__name__} has no groups(): a benchmark holds out whole subjects "
                        "and needs the subject of every item")
    groups = [str(g) for g in dataset.groups()]
    folds = [(tr.tolist(), te.tolist()) for tr, te in group_kfold(groups, n_folds, seed, labels=_labels(dataset))]
    record = {"folds": [{"test": te, "test_subjects": sorted({groups[i] for i in te})} for _, te in folds]}
    return folds, groups, record


def _read_predictions(path: Path) -> tuple[list[int], list[str], list[int], list[list[float]]]:
    """``predictions.csv`` of a fine-tune -> (item indices, subjects, labels as class indices, probabilities)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = [c[len("prob_"):] for c in reader.fieldnames or [] if c.startswith("prob_")]
        rows = list(reader)
    code = {n: i for i, n in enumerate(names)}
    return ([int(r["index"]) for r in rows], [r.get("subject", "") for r in rows], [code[r["label"]] for r in rows],
            [[float(r[f"prob_{n}"]) for n in names] for r in rows])


def _samples_per_s(run_dir: Path) -> float | None:
    """Median training samples/s of an engine run (its first step, which warms up, left out)."""
    log = run_dir / "run" / "metrics.jsonl"
    if not log.is_file():
        return None
    values = [json.loads(line).get("samples_per_s") for line in log.read_text().splitlines() if line.strip()]
    values = [v for v in values if isinstance(v, (int, float))]
    return float(np.median(values[1:] if len(values) > 1 else values)) if values else None


def _run_cell(recipe: RecipeConfig, spec: str, method: str, split: tuple[list[int], list[int]], cell: Path,
              options: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    if cell.exists():  # an unfinished cell (stopped before cell.json): start it again
        shutil.rmtree(cell)
    opts = FinetuneOptions(method=method, **options)
    start = time.perf_counter()
    result = run_finetune(recipe, spec, cell, opts, provenance={"benchmark": record}, split=split)
    seconds = time.perf_counter() - start
    index, subjects, labels, prob = _read_predictions(Path(result["outputs"]["predictions"]))
    if sorted(index) != sorted(split[1]):
        raise DataError(f"{cell}: the fine-tune predicted items {sorted(index)[:5]}... but the fold holds out "
                        f"{sorted(split[1])[:5]}...; the runner did not use the fold")
    done = {**record, "metrics": result["metrics"], "trainable_params": result["trainable_params"],
            "seconds": seconds, "train_samples_per_s": _samples_per_s(cell), "n_train": len(split[0]),
            "items": {"index": index, "subject": subjects, "label": labels, "prob": prob}}
    atomic_write_json(cell / CELL, done)
    return done


def run_benchmark(recipe: RecipeConfig, models: Sequence[str], methods: Sequence[str], n_folds: int = 5,
                  output_dir: str | Path | None = None, *, seed: int = 0, options: dict[str, Any] | None = None,
                  confidence: float = 0.95, say: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Cross-validate every model x method on the recipe's labelled data set; write the report.

    Args:
        recipe: a fine-tuning recipe (labelled ``data`` with ``groups()``, ``objective.task: classification``).
        models: ``SPEC`` or ``LABEL=SPEC`` per model; a spec is what ``finetune --from`` takes.
        methods: fine-tuning methods (``linear-probe``, ``mlp-probe``, ``full``, ``lora``, ``dopamine``, ...).
        n_folds: K of the subject-grouped, class-stratified K-fold.
        output_dir: the benchmark folder (None: a new ``runs/benchmark/<recipe>-<timestamp>``); an existing
            benchmark of the same protocol resumes there.
        seed: seed of the folds.
        options: other :class:`FinetuneOptions` fields, the same for every cell (e.g. ``{"adapter": {"r": 4}}``).
        confidence: level of the bootstrap intervals.
        say: where progress lines go (default: stdout).

    Returns:
        The summary rows, the pairwise tests and the files written.

    Raises:
        ConfigError: an unknown method, a non-classification recipe, bad ``--models``, or an output folder that
            holds something else.
        DataError: too few subjects for ``n_folds`` with every class on both sides, or data that changed under
            a resumed benchmark.
    """
    say = say or (lambda line: print(line, flush=True))
    rows_in = parse_models(models)
    methods = list(dict.fromkeys(methods))
    options = dict(options or {})
    for m in methods:
        FinetuneOptions(method=m, **options)  # an unknown method or option stops before any work
    if not methods:
        raise ConfigError("--methods: name at least one method")
    if recipe.objective.config.task != "classification":
        raise ConfigError(f"recipe {recipe.name}, key objective.task: the benchmark scores classification (balanced "
                          f"accuracy, kappa, F1), got {recipe.objective.config.task!r}")
    out = Path(output_dir) if output_dir is not None else default_output_dir(recipe.name)
    protocol = {"recipe": recipe.to_dict(), "folds": n_folds, "seed": seed, "options": options}
    protocol = json.loads(json.dumps(protocol, default=str))
    _check_output(out, protocol)
    data_cls = DATASETS.get(recipe.data.name, where="recipe key data.name")
    prepare_dataset(data_cls, recipe.data.config)
    dataset = data_cls(recipe.data.config)
    folds, groups, record = _folds(dataset, n_folds, seed)
    if (out / "splits.json").is_file():
        if json.loads((out / "splits.json").read_text()) != record:
            raise DataError(f"{out / 'splits.json'}: the data set's items or subjects changed since this benchmark "
                            "began, so its folds differ; give a new --output-dir")
    else:  # a new benchmark: its protocol and folds, written once the folds exist
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "splits.json", record)
        atomic_write_json(out / MANIFEST, protocol)
    say(f"benchmark {recipe.name}: {len(dataset)} items of {len(set(groups))} subjects, {n_folds} folds, "
        f"{len(rows_in)} model(s) x {len(methods)} method(s) -> {out}")
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    total, k = len(rows_in) * len(methods) * n_folds, 0
    for label, spec in rows_in:
        for method in methods:
            for f, split in enumerate(folds):
                k += 1
                cell = out / "cells" / _slug(label) / _slug(method) / f"fold-{f}"
                head = f"[{k}/{total}] {label} / {method} / fold {f + 1} of {n_folds}"
                done = json.loads((cell / CELL).read_text()) if (cell / CELL).is_file() else None
                if done is not None and done.get("spec") == spec:
                    say(f"{head}: finished before, kept (balanced accuracy "
                        f"{done['metrics']['balanced_accuracy']:.3f})")
                else:
                    say(f"{head}: running ({len(split[0])} training, {len(split[1])} held-out items)")
                    record = {"model": label, "spec": spec, "method": method, "fold": f}
                    done = _run_cell(recipe, spec, method, split, cell, options, record)
                    say(f"{head}: done in {done['seconds']:.1f} s, balanced accuracy "
                        f"{done['metrics']['balanced_accuracy']:.3f}")
                cells.setdefault((label, method), []).append(done)
    result = summarise(cells, confidence, seed)
    result.files = write_report(out, recipe, result, n_folds, len(set(groups)), len(dataset),
                                getattr(dataset, "num_classes", None))
    say(f"benchmark {recipe.name}: results in {result.files['results.md']}")
    return result


def summarise(cells: dict[tuple[str, str], list[dict[str, Any]]], confidence: float = 0.95,
              seed: int = 0) -> BenchmarkResult:
    """Per-fold and per-subject metrics, intervals over subjects and pairwise tests of finished cells."""
    rows, lines, per_subject_ba = [], [], {}
    for (label, method), done in cells.items():
        name = f"{label} / {method}"
        y, p, s = [], [], []
        for c in done:
            y += c["items"]["label"]
            p += c["items"]["prob"]
            s += c["items"]["subject"]
            lines.append({"model": label, "spec": c["spec"], "method": method, "level": "fold", "unit": c["fold"],
                          "n_items": len(c["items"]["label"]),
                          **{m: c["metrics"].get(m, math.nan) for m in PROTOCOL_METRICS}})
        subjects = per_subject_metrics(np.asarray(y), np.asarray(p), s)
        for subject, m in subjects.items():
            lines.append({"model": label, "spec": done[0]["spec"], "method": method, "level": "subject",
                          "unit": subject, "n_items": s.count(subject), **m})
        per_subject_ba[name] = {subj: m["balanced_accuracy"] for subj, m in subjects.items()}
        row: dict[str, Any] = {"row": name, "model": label, "spec": done[0]["spec"], "method": method,
                               "subjects": len(subjects)}
        for m in PROTOCOL_METRICS:
            iv = bootstrap_ci([v[m] for v in subjects.values() if m in v], confidence, seed=seed)
            row[m] = {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n, "text": str(iv)}
            fold = np.array([c["metrics"].get(m, math.nan) for c in done], dtype=float)
            row[f"{m}_folds"] = {"mean": float(np.nanmean(fold)) if np.isfinite(fold).any() else math.nan,
                                 "std": float(np.nanstd(fold)) if np.isfinite(fold).any() else math.nan}
        row["trainable_params"] = done[0]["trainable_params"]
        rates = [c["train_samples_per_s"] for c in done if c.get("train_samples_per_s")]
        row["train_samples_per_s"] = float(np.median(rates)) if rates else None
        row["seconds"] = float(sum(c["seconds"] for c in done))
        rows.append(row)
    tests = [t.__dict__ for t in paired_wilcoxon(per_subject_ba)]
    return BenchmarkResult(rows=rows, tests=tests, lines=lines, files={"per_subject_ba": per_subject_ba})


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.4g}" if isinstance(v, float)
                                                                               else str(v))


def write_report(out: Path, recipe: RecipeConfig, result: BenchmarkResult, n_folds: int, n_subjects: int,
                 n_items: int, num_classes: int | None) -> dict[str, str]:
    """``results.md``, ``results.csv``, ``results.json`` and ``subject_scores.png`` in ``out``."""
    per_subject = result.files.pop("per_subject_ba")
    metrics = [m for m in PROTOCOL_METRICS if any(r[m]["n"] for r in result.rows)]
    summary = [{"model": r["model"], "method": r["method"], "subjects": r["subjects"],
                **{f"{m} (mean [95% CI] over subjects)": r[m]["text"] for m in metrics},
                **{f"{m} per fold (mean ± sd)": f"{r[f'{m}_folds']['mean']:.3f} ± {r[f'{m}_folds']['std']:.3f}"
                   for m in metrics}} for r in result.rows]
    tests = [{"row A": t["a"], "row B": t["b"], "subjects": t["n"], "mean A - B": _fmt(t["mean_diff"]),
              "W": _fmt(t["statistic"]), "p": _fmt(t["p_value"]), "p (Holm)": _fmt(t["p_holm"])}
             for t in result.tests]
    chance = 1.0 / num_classes if num_classes else None
    text = (f"# Benchmark: {recipe.name}\n\n{n_items} items of {n_subjects} subjects; subject-grouped, "
            f"class-stratified {n_folds}-fold cross-validation (the same folds for every row: `splits.json`); "
            f"every subject held out once. Intervals: 95% percentile bootstrap over subjects. Chance balanced "
            f"accuracy: {_fmt(chance)}.\n\n" + markdown_table(summary) +
            "\n## Paired Wilcoxon signed-rank tests (per-subject balanced accuracy, two-sided)\n\n" +
            (markdown_table(tests) if tests else "(one row only: nothing to compare)\n") +
            "\nPer-fold and per-subject values: `results.csv`; one point per subject and row: "
            "`subject_scores.png`.\n")
    md = atomic_write_text(out / "results.md", text)
    buf = io.StringIO()
    cols = ["model", "spec", "method", "level", "unit", "n_items", *PROTOCOL_METRICS]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for line in result.lines:
        writer.writerow({c: (f"{v:.6f}" if isinstance(v := line.get(c, ""), float) else v) for c in cols})
    table = atomic_write_text(out / "results.csv", buf.getvalue())
    js = atomic_write_json(out / "results.json", {"rows": result.rows, "tests": result.tests})
    intervals = {r["row"]: (r["balanced_accuracy"]["mean"], r["balanced_accuracy"]["low"],
                            r["balanced_accuracy"]["high"]) for r in result.rows}
    png = save_subject_scores(per_subject, out / "subject_scores.png", "balanced accuracy", intervals,
                              title=f"{recipe.name}: {n_folds}-fold, subject-grouped", chance=chance)
    return {"results.md": str(md), "results.csv": str(table), "results.json": str(js), "plot": str(png)}


def print_summary(result: BenchmarkResult, stream: Any = None) -> None:
    """The rows' balanced accuracy with intervals, one line each."""
    stream = stream or sys.stdout
    for r in result.rows:
        print(f"  {r['row']:40s} balanced accuracy {r['balanced_accuracy']['text']}", file=stream)
