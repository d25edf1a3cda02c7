"""The challenge's per-image metric formulas (numpy / scipy) and the two rule sets for the undefined cases.

Per image, identical under both rule sets (the formulas of the FM_UIA 2026 ``evaluate.py``):

- Dice per foreground class; both masks empty counts 1.
- Hausdorff distance per foreground class in original pixels (symmetric, over foreground pixel
  centres); both empty counts 0, exactly one empty counts the image diagonal.
- Detection: IoU of two ``(x_min, y_min, x_max, y_max)`` boxes, 0 when the union is empty.
- Regression: mean radial error, the mean Euclidean distance of the keypoints in pixels.

Per task, classification, where the rule sets differ only in the undefined cases:

- ``official`` (what the challenge's evaluator computes with the scikit-learn it pins, 1.2.2):
  binary AUC of the positive-class probability, 0.0 when the truth holds one class only; with
  more than two classes one-vs-rest macro AUC, 0.0 unless every class of the task appears in the
  truth and the probabilities of every row sum to 1 (``numpy.allclose``).
- ``strict`` (the suite's): the same AUC where it is defined, NaN otherwise.

Both: accuracy; macro and weighted F1 over the labels seen in truth or prediction (0 for a label
never predicted, like scikit-learn's ``zero_division=0``); MCC in Gorodkin's multi-class form,
0 when undefined. Which images a task counts (detection negatives) is decided in
:mod:`~foundation.modalities.ultrasound.evaluate`.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "RULES",
    "binary_auc",
    "box_iou",
    "classification_scores",
    "dice_per_class",
    "dice_score",
    "hausdorff_distance",
    "hausdorff_per_class",
    "mean_radial_error",
    "multiclass_auc",
]

RULES = ("official", "strict")


def _check_rules(rules: str) -> None:
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)}, got {rules!r}")


def dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class ``1 .. C-1`` of label maps ``[H, W]`` (both empty: 1)."""
    scores = []
    for k in range(1, num_classes):
        p, g = pred == k, gt == k
        total = int(p.sum()) + int(g.sum())
        scores.append(1.0 if total == 0 else 2.0 * float((p & g).sum()) / float(total))
    return scores


def dice_score(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice of label maps ``[H, W]``."""
    return float(np.mean(dice_per_class(pred, gt, num_classes)))


def _directed(a: np.ndarray, b: np.ndarray) -> float:
    """max over pixels of ``a`` of the distance to the nearest pixel of ``b``."""
    from scipy.ndimage import distance_transform_edt

    return float(distance_transform_edt(~b)[a].max())


def hausdorff_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    """Hausdorff distance in pixels of each foreground class of label maps ``[H, W]`` (see the module docstring)."""
    diagonal = math.sqrt(pred.shape[0] ** 2 + pred.shape[1] ** 2)
    scores = []
    for k in range(1, num_classes):
        p, g = pred == k, gt == k
        if not p.any() and not g.any():
            scores.append(0.0)
        elif not p.any() or not g.any():
            scores.append(diagonal)
        else:
            scores.append(max(_directed(p, g), _directed(g, p)))
    return scores


def hausdorff_distance(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean foreground Hausdorff distance in pixels of label maps ``[H, W]``."""
    return float(np.mean(hausdorff_per_class(pred, gt, num_classes)))


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties count half); NaN if one class only."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multiclass_auc(y_true: np.ndarray, y_prob: np.ndarray, rules: str = "strict") -> float:
    """AUC of a task: binary for two classes, else one-vs-rest macro (see the module docstring for the rules).

    Args:
        y_true: labels ``[S]`` in ``0 .. C-1``.
        y_prob: probabilities ``[S, C]``.
        rules: ``official`` (undefined -> 0.0) or ``strict`` (undefined -> NaN).
    """
    _check_rules(rules)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    C = y_prob.shape[1]
    undefined = 0.0 if rules == "official" else float("nan")
    if C == 2:
        auc = binary_auc(y_true == 1, y_prob[:, 1])
        return undefined if math.isnan(auc) else auc
    if len(np.unique(y_true)) != C:
        return undefined
    if rules == "official" and not np.allclose(1, y_prob.sum(axis=1)):
        return undefined
    return float(np.mean([binary_auc(y_true == k, y_prob[:, k]) for k in range(C)]))


def classification_scores(y_true: np.ndarray, y_prob: np.ndarray, rules: str = "strict") -> dict[str, float]:
    """Accuracy, AUC, macro / weighted F1 and MCC from labels ``[S]`` and probabilities ``[S, C]``.

    The predicted class is the most probable one (what the submission writes as ``predicted_class``).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    C = y_prob.shape[1]
    y_pred = y_prob.argmax(1)
    cm = np.zeros((C, C), dtype=np.float64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp, t, p = np.diag(cm), cm.sum(1), cm.sum(0)
    labels = (t > 0) | (p > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(t + p > 0, 2 * tp / (t + p), 0.0)
    s, c = cm.sum(), tp.sum()
    denom = math.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    return {
        "accuracy": float(c / s),
        "auc": multiclass_auc(y_true, y_prob, rules),
        "f1_macro": float(f1[labels].mean()),
        "f1_weighted": float((f1 * t).sum() / t.sum()),
        "mcc": float((c * s - t @ p) / denom) if denom > 0 else 0.0,
    }


def box_iou(pred: tuple[float, ...] | np.ndarray, gt: tuple[float, ...] | np.ndarray) -> float:
    """IoU of two ``(x_min, y_min, x_max, y_max)`` boxes in pixels; 0 when the union is empty."""
    ix = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0]))
    iy = max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
    inter = ix * iy
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return float(inter / union) if union != 0 else 0.0


def mean_radial_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean distance between keypoints ``[P, 2]`` (pixels)."""
    return float(np.linalg.norm(np.asarray(pred, float) - np.asarray(gt, float), axis=-1).mean())
