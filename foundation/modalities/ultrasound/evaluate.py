"""Metrics per task and per task type under two labelled rule sets, a results table, and PNG grids.

``evaluate(predictions, table, rules)`` reads the ground truth from the records (masks from disk)
and returns ``{task_id: {metric: value, "n": images counted}}``; ``summarize`` averages each
metric over the tasks of a type. The rule sets (see also :mod:`~foundation.modalities.ultrasound.metrics`):

- ``official``: what the challenge's ``evaluate.py`` computes from a submission. Segmentation:
  the ground truth read as 8-bit grayscale, a prediction of another size resized to it (nearest
  neighbour, OpenCV's rule), each class's Dice / HD averaged over the images, then over the
  foreground classes. Detection: only images with a true box count, each scored by the IoU of the
  best predicted box. Regression: an unknown true point counts as (0, 0). AUC: 0.0 where
  undefined. Per-type means over the tasks that counted at least one image; a task without one
  reports 0.0 for every metric and ``n`` 0, as the evaluator does. One difference on broken data: a
  missing or unreadable ground-truth mask raises :class:`~foundation.errors.DataError` here, where
  the evaluator skips the image.
- ``strict``: the suite's rules. A prediction must be at the ground truth's size; Dice / HD are
  averaged per image, then over the images; detection scores every image (a negative predicted as
  negative counts 1, a miss or a false alarm 0, where "predicted" means the objectness reached the
  threshold of :func:`~foundation.modalities.ultrasound.predict.predict`); unknown keypoints are
  left out (an image without a known point does not count; a task without one reports NaN); AUC is
  NaN where undefined, and per-type means skip NaN.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from foundation.errors import DataError
from foundation.modalities.ultrasound.images import read_image
from foundation.modalities.ultrasound.metrics import (
    RULES,
    box_iou,
    classification_scores,
    dice_per_class,
    hausdorff_per_class,
    mean_radial_error,
)
from foundation.modalities.ultrasound.predict import Prediction
from foundation.modalities.ultrasound.tasks import TASK_TYPES, TaskSpec

__all__ = [
    "HEADLINE",
    "RULES",
    "evaluate",
    "read_truth_mask",
    "resize_nearest",
    "results_markdown",
    "save_prediction_grids",
    "summarize",
]

HEADLINE = {"segmentation": ("dice", "hd"), "classification": ("accuracy", "auc", "f1_macro", "f1_weighted", "mcc"),
            "detection": ("iou",), "regression": ("mre",)}


def read_truth_mask(path: str | Path, num_classes: int) -> tuple[np.ndarray, str]:
    """Read a ground-truth mask as the official evaluator does (8-bit grayscale), as int64 ``[H, W]``.

    Grayscale (``L``, ``LA``) and gray palettes are read as they are; an RGB(A) mask whose three
    channels are equal is accepted (the value is the class index) and reported in the returned note.

    Returns:
        ``(mask, note)``: note is "" or says what was accepted, for one warning over many masks.

    Raises:
        DataError: missing or unreadable file; a colour mask (channels differ) or a colour palette,
            a 16-bit or 1-bit mask (the official reader turns these into other values); a value
            ``>= num_classes``.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found; check mask_path in the CSV (relative to the CSV folder)")
    note = ""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                arr = np.asarray(im).astype(np.int64)
                palette = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
                used = np.unique(arr)
                if len(palette) <= used.max() or not (palette[used] == used[:, None]).all():
                    raise DataError(f"{path}: palette mask whose colours are not the gray levels of their indices; "
                                    "the official evaluator reads the colours' gray level, not the index: save the "
                                    "mask as 8-bit grayscale (pixel value = class index)")
            elif mode in ("L", "LA"):
                arr = np.asarray(im.convert("L")).astype(np.int64)
                note = "grayscale mask with an alpha channel, alpha ignored" if mode == "LA" else ""
            elif mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB")).astype(np.int64)
                if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                    raise DataError(f"{path}: colour mask (its channels differ); the official evaluator reads masks "
                                    "as grayscale, so colours would become other class values: save the mask as "
                                    "8-bit grayscale (pixel value = class index)")
                arr = rgb[..., 0]
                note = f"{mode} mask with three equal channels, read as grayscale"
            else:
                raise DataError(f"{path}: mask has mode {mode!r}; the official evaluator reads 8-bit grayscale "
                                "(16-bit and 1-bit masks change value): save it as 8-bit grayscale")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a readable mask ({err}); check the file") from err
    top = int(arr.max()) if arr.size else 0
    if top >= num_classes:
        raise DataError(f"{path}: mask value {top} outside [0, {num_classes - 1}] for a task with {num_classes} "
                        "classes (pixel value = class index, background 0)")
    return arr, note


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize ``[h, w] -> shape`` with OpenCV's ``INTER_NEAREST`` rule (src = floor(dst * h / H))."""
    (h, w), (H, W) = mask.shape, shape
    rows = np.minimum(np.floor(np.arange(H) * (1.0 / (H / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(W) * (1.0 / (W / w))).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def _segmentation(preds: Sequence[Prediction], spec: TaskSpec, rules: str, notes: dict[str, int]) -> dict[str, float]:
    per_image_dice, per_image_hd = [], []
    for p in preds:
        if p.record.mask is None:
            raise DataError(f"{p.record.source}: no mask_path; evaluate labelled CSVs only")
        gt, note = read_truth_mask(p.record.mask, spec.num_classes)
        if note:
            notes[note] = notes.get(note, 0) + 1
        pred = p.mask
        if pred.shape != gt.shape:
            if rules == "strict":
                raise DataError(f"{p.record.source}: the mask is {gt.shape[1]}x{gt.shape[0]} but the image "
                                f"{pred.shape[1]}x{pred.shape[0]}; the strict rules need them equal (the official "
                                "evaluator resizes the prediction: --rules official)")
            pred = resize_nearest(pred.astype(np.uint8), gt.shape)
        per_image_dice.append(dice_per_class(pred, gt, spec.num_classes))
        per_image_hd.append(hausdorff_per_class(pred, gt, spec.num_classes))
    d, h = np.asarray(per_image_dice), np.asarray(per_image_hd)  # [images, C-1]
    if rules == "official":  # each class over the images, then over the classes
        return {"dice": float(np.mean(d.mean(axis=0))), "hd": float(np.mean(h.mean(axis=0))), "n": float(len(preds))}
    return {"dice": float(d.mean(axis=1).mean()), "hd": float(h.mean(axis=1).mean()), "n": float(len(preds))}


def _detection(preds: Sequence[Prediction], rules: str) -> dict[str, float]:
    if rules == "official":
        scores = [box_iou(p.box, p.record.box) for p in preds if p.record.box is not None]
    else:
        scores = [(1.0 if p.record.box is None else 0.0) if not p.found else
                  (0.0 if p.record.box is None else box_iou(p.box, p.record.box)) for p in preds]
    return {"iou": float(np.mean(scores)) if scores else 0.0, "n": float(len(scores))}


def _regression(preds: Sequence[Prediction], rules: str) -> dict[str, float]:
    scores = []
    for p in preds:
        gt = np.asarray(p.record.points, dtype=np.float64).reshape(-1, 2)
        if rules == "official":
            scores.append(mean_radial_error(p.points, np.nan_to_num(gt, nan=0.0)))
        else:
            known = np.isfinite(gt).all(axis=1)
            if known.any():
                scores.append(mean_radial_error(np.asarray(p.points)[known], gt[known]))
    empty = 0.0 if rules == "official" else float("nan")
    return {"mre": float(np.mean(scores)) if scores else empty, "n": float(len(scores))}


def evaluate(predictions: Sequence[Prediction], table: Mapping[str, TaskSpec],
             rules: str = "official") -> dict[str, dict[str, float]]:
    """Metrics of every task present in ``predictions`` under one rule set (see the module docstring).

    Args:
        predictions: from :func:`~foundation.modalities.ultrasound.predict.predict` on labelled records.
        table: the task table.
        rules: ``official`` or ``strict``.

    Returns:
        ``{task_id: {metric: value, "n": images counted}}`` in the order tasks first appear.

    Raises:
        DataError: a prediction of a labelled task lacks its ground truth, or a mask is unusable.
    """
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)}, got {rules!r}")
    by_task: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_task.setdefault(p.record.task_id, []).append(p)
    notes: dict[str, int] = {}
    out: dict[str, dict[str, float]] = {}
    for tid, preds in by_task.items():
        spec = table[tid]
        if spec.type == "classification":
            if any(p.record.label < 0 for p in preds):
                raise DataError(f"task {tid}: a record has no label; evaluate labelled CSVs only")
            out[tid] = {**classification_scores(np.array([p.record.label for p in preds]),
                                                np.stack([p.probs for p in preds]), rules), "n": float(len(preds))}
        elif spec.type == "segmentation":
            out[tid] = _segmentation(preds, spec, rules, notes)
        elif spec.type == "detection":
            out[tid] = _detection(preds, rules)
        else:
            out[tid] = _regression(preds, rules)
    for note, count in notes.items():
        warnings.warn(f"{count} ground-truth mask(s): {note}", stacklevel=2)
    return out


def summarize(per_task: Mapping[str, Mapping[str, float]], table: Mapping[str, TaskSpec],
              rules: str = "official") -> dict[str, dict[str, float]]:
    """Mean of each headline metric over the tasks of each type that counted an image.

    ``official`` averages every value, as the evaluator prints them; ``strict`` skips NaN (NaN when
    no task of the type has the metric defined). Each type also reports ``tasks``, how many counted.
    """
    out: dict[str, dict[str, float]] = {}
    for kind in TASK_TYPES:
        rows = [m for t, m in per_task.items() if table[t].type == kind and m["n"] > 0]
        if not rows:
            continue
        means = {}
        for k in HEADLINE[kind]:
            values = np.array([m[k] for m in rows], dtype=np.float64)
            if rules == "strict":
                values = values[~np.isnan(values)]
            means[k] = float(np.mean(values)) if len(values) else float("nan")
        out[kind] = {**means, "tasks": float(len(rows))}
    return out


def results_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]], table: Mapping[str, TaskSpec]) -> str:
    """A markdown table: per task one row per rule set (the ``rules`` column names it), then the per-type means.

    Args:
        results: ``{rules: per_task}`` as from :func:`evaluate`, e.g. ``{"official": ..., "strict": ...}``.
        table: the task table.
    """
    lines = ["| task | type | rules | n | metrics |", "|---|---|---|---|---|"]
    tasks = list(dict.fromkeys(t for per_task in results.values() for t in per_task))
    for tid in tasks:
        kind = table[tid].type
        for rules, per_task in results.items():
            m = per_task[tid]
            vals = ", ".join(f"{k} {m[k]:.4f}" for k in HEADLINE[kind])
            lines.append(f"| {tid} | {kind} | {rules} | {int(m['n'])} | {vals} |")
    for rules, per_task in results.items():
        for kind, m in summarize(per_task, table, rules).items():
            vals = ", ".join(f"{k} {m[k]:.4f}" for k in HEADLINE[kind])
            lines.append(f"| **mean of {int(m['tasks'])} tasks** | {kind} | {rules} | | {vals} |")
    return "\n".join(lines) + "\n"


def save_prediction_grids(predictions: Sequence[Prediction], table: Mapping[str, TaskSpec], folder: str | Path,
                          per_type: int = 8) -> list[Path]:
    """One PNG per task type: up to ``per_type`` images with prediction (red) and truth (green) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in TASK_TYPES:
        chosen = [p for p in predictions if table[p.record.task_id].type == kind][:per_type]
        if not chosen:
            continue
        fig, axes = plt.subplots(1, len(chosen), figsize=(2.4 * len(chosen), 2.8), squeeze=False)
        for ax, p in zip(axes[0], chosen):
            r = p.record
            ax.imshow(read_image(r.image).mean(-1), cmap="gray")
            title = r.task_id
            if kind == "segmentation":
                ax.contour(p.mask, levels=np.arange(table[r.task_id].num_classes) + 0.5, colors="red", linewidths=0.8)
                if r.mask is not None:
                    gt = read_truth_mask(r.mask, table[r.task_id].num_classes)[0]
                    ax.contour(gt, levels=np.arange(table[r.task_id].num_classes) + 0.5, colors="lime",
                               linewidths=0.8)
            elif kind == "classification":
                title += f"\npred {int(np.argmax(p.probs))} / true {r.label}"
            elif kind == "detection":
                for box, colour in ((p.box if p.found else None, "red"), (r.box, "lime")):
                    if box is not None:
                        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=colour))
            else:
                ax.scatter(p.points[:, 0], p.points[:, 1], c="red", s=12)
                if r.points:
                    gt = np.asarray(r.points, dtype=np.float64)
                    ax.scatter(gt[:, 0], gt[:, 1], c="lime", s=12, marker="x")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        fig.suptitle(f"{kind}: prediction red, truth green", fontsize=8)
        fig.tight_layout()
        path = folder / f"predictions_{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
