"""Official metrics per task and averaged per task type, a results table, and PNG grids of predictions.

``evaluate(predictions, table)`` reads the ground truth from the records (masks from disk at
original size) and returns ``{task_id: {metric: value}}``; ``summarize`` averages each metric
over the tasks of a type (the challenge's per-type scores).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from foundation.errors import DataError
from foundation.modalities.ultrasound.images import read_image, read_mask
from foundation.modalities.ultrasound.metrics import (
    box_iou,
    classification_scores,
    dice_score,
    hausdorff_distance,
    mean_radial_error,
)
from foundation.modalities.ultrasound.predict import Prediction
from foundation.modalities.ultrasound.tasks import TASK_TYPES, TaskSpec

__all__ = ["evaluate", "summarize", "results_markdown", "save_prediction_grids", "HEADLINE"]

HEADLINE = {"segmentation": ("dice", "hd"), "classification": ("accuracy", "auc", "f1_macro", "f1_weighted", "mcc"),
            "detection": ("iou",), "regression": ("mre",)}


def evaluate(predictions: Sequence[Prediction], table: Mapping[str, TaskSpec]) -> dict[str, dict[str, float]]:
    """Official metrics of every task present in ``predictions``.

    Raises:
        DataError: a prediction of a labelled task lacks its ground truth.
    """
    by_task: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_task.setdefault(p.record.task_id, []).append(p)
    out: dict[str, dict[str, float]] = {}
    for tid, preds in by_task.items():
        spec = table[tid]
        if spec.type == "classification":
            if any(p.record.label < 0 for p in preds):
                raise DataError(f"task {tid}: a record has no label; evaluate labelled CSVs only")
            out[tid] = classification_scores(np.array([p.record.label for p in preds]),
                                             np.stack([p.probs for p in preds]))
        elif spec.type == "segmentation":
            dice, hd = [], []
            for p in preds:
                if p.record.mask is None:
                    raise DataError(f"{p.record.source}: no mask_path; evaluate labelled CSVs only")
                gt = read_mask(p.record.mask, spec.num_classes)
                dice.append(dice_score(p.mask, gt, spec.num_classes))
                hd.append(hausdorff_distance(p.mask, gt, spec.num_classes))
            out[tid] = {"dice": float(np.mean(dice)), "hd": float(np.mean(hd))}
        elif spec.type == "detection":
            out[tid] = {"iou": float(np.mean([box_iou(p.box, p.record.box) for p in preds]))}
        else:
            out[tid] = {"mre": float(np.mean([mean_radial_error(p.points, p.record.points) for p in preds]))}
        out[tid]["n"] = float(len(preds))
    return out


def summarize(per_task: Mapping[str, Mapping[str, float]], table: Mapping[str, TaskSpec]) -> dict[str, dict[str, float]]:
    """Mean of each headline metric over the tasks of each type present."""
    out: dict[str, dict[str, float]] = {}
    for kind in TASK_TYPES:
        rows = [m for t, m in per_task.items() if table[t].type == kind]
        if rows:
            out[kind] = {k: float(np.nanmean([m[k] for m in rows])) for k in HEADLINE[kind]}
    return out


def results_markdown(per_task: Mapping[str, Mapping[str, float]], table: Mapping[str, TaskSpec]) -> str:
    """A markdown table: one row per task (its type's metrics), then the per-type means."""
    lines = ["| task | type | n | metrics |", "|---|---|---|---|"]
    for tid, m in per_task.items():
        kind = table[tid].type
        vals = ", ".join(f"{k} {m[k]:.3f}" for k in HEADLINE[kind])
        lines.append(f"| {tid} | {kind} | {int(m['n'])} | {vals} |")
    for kind, m in summarize(per_task, table).items():
        lines.append(f"| **mean** | {kind} | | {', '.join(f'{k} {v:.3f}' for k, v in m.items())} |")
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
                    gt = read_mask(r.mask, table[r.task_id].num_classes)
                    ax.contour(gt, levels=np.arange(table[r.task_id].num_classes) + 0.5, colors="lime",
                               linewidths=0.8)
            elif kind == "classification":
                title += f"\npred {int(np.argmax(p.probs))} / true {r.label}"
            elif kind == "detection":
                for box, colour in ((p.box, "red"), (r.box, "lime")):
                    if box is not None:
                        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=colour))
            else:
                ax.scatter(p.points[:, 0], p.points[:, 1], c="red", s=12)
                if r.points:
                    gt = np.asarray(r.points)
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
