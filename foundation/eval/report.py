"""Downstream reports: a markdown results table, a confusion-matrix PNG, a predicted-vs-true PNG."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.atomic import atomic_path

__all__ = ["markdown_table", "save_confusion_matrix", "save_pred_vs_true", "save_subject_scores"]


def markdown_table(rows: list[dict[str, Any]], floatfmt: str = ".4f") -> str:
    """A markdown table of ``rows`` (columns in first-seen key order; floats formatted with ``floatfmt``)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    fmt = lambda v: format(v, floatfmt) if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def save_confusion_matrix(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray,
                          labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows = true class, colour = share of the row) with the share and the
    count in every cell, class names on both axes and a wrapped title, as a PNG readable at 100% zoom."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    k = len(labels)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, p), 1)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = max(4.5, 1.6 + 0.9 * k)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.0%}\n({cm[i, j]})", ha="center", va="center", fontsize=9,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels=list(labels), rotation=30 if max(map(len, labels), default=0) > 4 else 0,
                  ha="right" if max(map(len, labels), default=0) > 4 else "center")
    ax.set_yticks(range(k), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row = 100%)")
    ax.set_title("\n".join(textwrap.wrap(title or "confusion matrix", 40)), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return _save(fig, path)


def save_pred_vs_true(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray, path: str | Path,
                      title: str = "") -> Path:
    """Scatter of predictions against targets with the identity line, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_pred, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(y, p, s=10, alpha=0.7)
    lo, hi = min(y.min(), p.min()), max(y.max(), p.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="true", ylabel="predicted", title=title or "predicted vs true")
    return _save(fig, path)


def save_finetune_curves(train: Sequence[tuple[int, float]], held_out: Sequence[tuple[int, float, float]],
                         path: str | Path, score_name: str = "score", title: str = "") -> Path:
    """Fine-tuning curves as a PNG: training loss and held-out loss against the step (left), the held-out
    score (right).

    Args:
        train: ``(step, training loss)`` per logged step.
        held_out: ``(step, held-out loss, held-out score)`` per evaluation.
        path: target PNG.
        score_name: what the score is ("balanced accuracy").
        title: figure title.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4.2))
    if train:
        ax_loss.plot([s for s, _ in train], [v for _, v in train], lw=1.0, alpha=0.8, label="training loss")
    ax_loss.plot([s for s, _, _ in held_out], [v for _, v, _ in held_out], "o-", lw=1.6, label="held-out loss")
    ax_loss.set(xlabel="optimizer step", ylabel="loss", title="loss")
    ax_loss.legend(fontsize=9)
    ax_loss.grid(alpha=0.3)
    ax_score.plot([s for s, _, _ in held_out], [v for _, _, v in held_out], "o-", color="tab:green", lw=1.6)
    ax_score.set(xlabel="optimizer step", ylabel=score_name, title=f"held-out {score_name} (monitoring only)")
    ax_score.grid(alpha=0.3)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize=11)
    return _save(fig, path)


def save_subject_scores(scores: dict[str, dict[str, float]], path: str | Path, metric: str = "balanced accuracy",
                        intervals: dict[str, tuple[float, float, float]] | None = None, title: str = "",
                        chance: float | None = None) -> Path:
    """One column per row of a benchmark (model / method), one point per subject, as a PNG.

    The same subject's points are joined by a faint line across the columns (the pairing the Wilcoxon tests
    use); ``intervals`` (``row -> (mean, low, high)``) draws each row's mean and bootstrap interval beside its
    points; ``chance`` a dashed line at the chance level.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(scores)
    subjects = list(dict.fromkeys(s for r in rows for s in scores[r]))
    offsets = np.linspace(-0.18, 0.18, len(subjects)) if len(subjects) > 1 else np.zeros(1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 1.3 * len(rows)), 4.5))
    for s, off in zip(subjects, offsets):
        xs = [i + off for i, r in enumerate(rows) if s in scores[r]]
        ys = [scores[r][s] for r in rows if s in scores[r]]
        ax.plot(xs, ys, "-", color="0.75", lw=0.7, zorder=1)
        ax.scatter(xs, ys, s=16, zorder=2, color="tab:blue", alpha=0.8)
    for i, r in enumerate(rows):
        if intervals and r in intervals and np.isfinite(intervals[r][0]):
            mean, low, high = intervals[r]
            err = None if not np.isfinite(low) else [[mean - low], [high - mean]]
            ax.errorbar([i + 0.32], [mean], yerr=err, fmt="D", color="tab:red", capsize=4, zorder=3,
                        label="mean, 95% bootstrap CI over subjects" if i == 0 else None)
    if chance is not None:
        ax.axhline(chance, ls="--", color="k", lw=0.8, label="chance")
    ax.set_xticks(range(len(rows)), labels=["\n".join(textwrap.wrap(r, 18)) for r in rows], fontsize=8)
    ax.set_ylabel(f"{metric} per subject")
    ax.set_title("\n".join(textwrap.wrap(title or f"{metric}: one point per subject", 60)), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
