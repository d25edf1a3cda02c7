"""The challenge's official metrics, computed directly (numpy / scipy), per image or per task.

- Dice per foreground class; both masks empty counts 1; averaged over the foreground classes.
- Hausdorff distance per foreground class in original pixels (symmetric, over foreground pixel
  centres); both empty counts 0, exactly one empty counts the image diagonal; averaged likewise.
- Classification: accuracy; AUC (binary: the positive class's probability; otherwise one-vs-rest
  macro over the classes present with both positives and negatives, like scikit-learn's ``ovr``);
  macro and weighted F1 (over the labels seen in truth or prediction, like scikit-learn); MCC
  (Gorodkin's multi-class form, 0 when undefined, like scikit-learn).
- Detection: IoU of the single box (a negative predicted as negative counts 1, a miss or false alarm 0).
- Regression: mean radial error, the mean Euclidean distance of the keypoints in pixels.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["dice_score", "hausdorff_distance", "classification_scores", "box_iou", "mean_radial_error",
           "binary_auc"]


def _class_masks(pred: np.ndarray, gt: np.ndarray, num_classes: int):
    for k in range(1, num_classes):
        yield pred == k, gt == k


def dice_score(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice of label maps ``[H, W]`` (both empty: 1)."""
    scores = []
    for p, g in _class_masks(pred, gt, num_classes):
        total = p.sum() + g.sum()
        scores.append(1.0 if total == 0 else 2.0 * float((p & g).sum()) / float(total))
    return float(np.mean(scores))


def _directed(a: np.ndarray, b: np.ndarray) -> float:
    """max over pixels of ``a`` of the distance to the nearest pixel of ``b``."""
    from scipy.ndimage import distance_transform_edt

    return float(distance_transform_edt(~b)[a].max())


def hausdorff_distance(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean foreground Hausdorff distance in pixels of label maps ``[H, W]`` (see the module docstring)."""
    diagonal = math.hypot(*gt.shape)
    scores = []
    for p, g in _class_masks(pred, gt, num_classes):
        if not p.any() and not g.any():
            scores.append(0.0)
        elif not p.any() or not g.any():
            scores.append(diagonal)
        else:
            scores.append(max(_directed(p, g), _directed(g, p)))
    return float(np.mean(scores))


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties count half); nan if one class only."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_scores(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """Accuracy, AUC, macro / weighted F1 and MCC from labels ``[S]`` and probabilities ``[S, C]``."""
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
    if C == 2:
        auc = binary_auc(y_true == 1, y_prob[:, 1])
    else:
        per_class = [binary_auc(y_true == k, y_prob[:, k]) for k in range(C) if 0 < (y_true == k).sum() < len(y_true)]
        auc = float(np.mean(per_class)) if per_class else float("nan")
    return {
        "accuracy": float(c / s),
        "auc": auc,
        "f1_macro": float(f1[labels].mean()),
        "f1_weighted": float((f1 * t).sum() / t.sum()),
        "mcc": float((c * s - t @ p) / denom) if denom > 0 else 0.0,
    }


def box_iou(pred: np.ndarray | None, gt: np.ndarray | None) -> float:
    """IoU of two ``(x_min, y_min, x_max, y_max)`` boxes; None is "no object" (both None: 1, one None: 0)."""
    if pred is None or gt is None:
        return 1.0 if pred is None and gt is None else 0.0
    ix = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0]))
    iy = max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
    inter = ix * iy
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mean_radial_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean distance between keypoints ``[P, 2]`` (pixels)."""
    return float(np.linalg.norm(np.asarray(pred, float) - np.asarray(gt, float), axis=-1).mean())
