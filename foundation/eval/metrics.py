"""Downstream metrics: classification (balanced accuracy, Cohen's kappa, weighted F1, AUROC, AUC-PR) and regression."""
from __future__ import annotations

import numpy as np
import torch

from foundation.errors import DataError

__all__ = ["classification_metrics", "regression_metrics"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def classification_metrics(y_true: torch.Tensor | np.ndarray, y_prob: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Metrics of class probabilities against integer labels.

    Args:
        y_true: labels ``[S]`` in ``0..C-1``.
        y_prob: probabilities ``[S, C]`` (rows sum to 1).

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``cohen_kappa``, ``weighted_f1``, ``macro_f1``; for two classes
        ``auroc`` and ``auc_pr`` of the positive class; for more, ``auroc`` one-vs-rest macro (when every class
        occurs in ``y_true``).

    Raises:
        DataError: shapes disagree or a label is outside ``0..C-1``.
    """
    from sklearn import metrics as skm

    y, p = _np(y_true).astype(int), _np(y_prob).astype(np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise DataError(f"classification metrics: y_prob {p.shape} must be [S, C] with S = len(y_true) = {y.shape[0]}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise DataError(f"classification metrics: labels span {y.min()}..{y.max()} but y_prob has {p.shape[1]} classes")
    pred = p.argmax(1)
    out = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "cohen_kappa": float(skm.cohen_kappa_score(y, pred)),
        "weighted_f1": float(skm.f1_score(y, pred, average="weighted", zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
    }
    present = np.unique(y)
    if p.shape[1] == 2 and present.size == 2:
        out["auroc"] = float(skm.roc_auc_score(y, p[:, 1]))
        out["auc_pr"] = float(skm.average_precision_score(y, p[:, 1]))
    elif p.shape[1] > 2 and present.size == p.shape[1]:
        probs = p / p.sum(1, keepdims=True)
        out["auroc"] = float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    return out


def regression_metrics(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R^2 and Pearson r of predictions ``[S]`` (or ``[S, T]``, averaged over targets)."""
    y, p = _np(y_true).astype(np.float64), _np(y_pred).astype(np.float64)
    if y.shape != p.shape:
        raise DataError(f"regression metrics: y_pred {p.shape} and y_true {y.shape} differ")
    y2, p2 = y.reshape(len(y), -1), p.reshape(len(p), -1)
    err = p2 - y2
    ss_res = (err**2).sum(0)
    ss_tot = ((y2 - y2.mean(0)) ** 2).sum(0)
    r = [np.corrcoef(y2[:, j], p2[:, j])[0, 1] if y2[:, j].std() > 0 and p2[:, j].std() > 0 else 0.0
         for j in range(y2.shape[1])]
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(np.mean(1 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan))),
        "pearson_r": float(np.mean(r)),
    }
