"""Statistics of the evaluation protocol: per-subject metrics, bootstrap intervals over subjects, paired tests.

A cross-validated benchmark (``foundation benchmark``) predicts every item once, in the fold that holds its
subject out. These functions turn those predictions into the numbers people compare models with:

* :func:`per_subject_metrics`: balanced accuracy, Cohen's kappa, weighted F1 (and, for two classes, AUROC) of
  each subject's items (:func:`foundation.eval.metrics.classification_metrics` on the subject's rows).
* :func:`bootstrap_ci`: the mean over subjects with a percentile bootstrap interval (subjects resampled with
  replacement; Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13), as
  ``scipy.stats.bootstrap(method="percentile")`` computes it.
* :func:`paired_wilcoxon`: a two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) between every pair
  of rows, paired by subject, with Holm's step-down adjustment over the pairs (:func:`holm`).
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from foundation.errors import DataError
from foundation.eval.metrics import classification_metrics

__all__ = ["PROTOCOL_METRICS", "Interval", "PairTest", "per_subject_metrics", "bootstrap_ci", "holm",
           "paired_wilcoxon"]

PROTOCOL_METRICS = ("balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc")


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` units (subjects) with its bootstrap interval ``[low, high]`` (NaN when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.mean:.3f} (n={self.n})"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class PairTest:
    """A paired two-sided Wilcoxon signed-rank test of row ``a`` against row ``b`` over ``n`` shared subjects.

    ``mean_diff`` is the mean of ``a - b``; ``p_holm`` is ``p_value`` after Holm's adjustment over every pair
    of the table. ``statistic`` and ``p_value`` are NaN when fewer than one subject pairs up.
    """

    a: str
    b: str
    n: int
    mean_diff: float
    statistic: float
    p_value: float
    p_holm: float = math.nan


def per_subject_metrics(y_true: torch.Tensor | np.ndarray, y_prob: torch.Tensor | np.ndarray,
                        subjects: Sequence[str]) -> dict[str, dict[str, float]]:
    """Balanced accuracy, Cohen's kappa, weighted F1 and (two classes) AUROC of each subject's items.

    A metric that a subject's items cannot define is NaN: kappa when the subject's labels and predictions
    are one and the same class, AUROC unless both classes occur among the subject's labels (a subject whose
    items share one label gets its balanced accuracy as the recall of that class).

    Args:
        y_true: labels ``[S]`` in ``0..C-1``.
        y_prob: class probabilities ``[S, C]``.
        subjects: the subject of every item, ``[S]``.

    Returns:
        ``{subject: {metric: value}}`` for the metrics of :data:`PROTOCOL_METRICS` (``auroc`` only for
        ``C == 2``), subjects in first-seen order.

    Raises:
        DataError: the lengths disagree.
    """
    y = np.asarray(y_true.cpu() if isinstance(y_true, torch.Tensor) else y_true).astype(int)
    p = np.asarray(y_prob.cpu() if isinstance(y_prob, torch.Tensor) else y_prob, dtype=np.float64)
    s = np.asarray([str(v) for v in subjects])
    if not (y.shape[0] == p.shape[0] == s.shape[0]):
        raise DataError(f"per-subject metrics: {y.shape[0]} labels, {p.shape[0]} probability rows and "
                        f"{s.shape[0]} subjects; give one of each per item")
    names = [m for m in PROTOCOL_METRICS if m != "auroc" or p.shape[1] == 2]
    out: dict[str, dict[str, float]] = {}
    for subject in dict.fromkeys(s.tolist()):
        rows = s == subject
        with warnings.catch_warnings():  # one-class subjects: sklearn warns, the value is defined (or NaN below)
            warnings.simplefilter("ignore")
            m = classification_metrics(y[rows], p[rows])
        if np.unique(np.concatenate([y[rows], p[rows].argmax(1)])).size < 2:
            m["cohen_kappa"] = math.nan  # (p_o - p_e) / (1 - p_e) with p_e = 1: undefined
        out[subject] = {k: float(m.get(k, math.nan)) for k in names}
    return out


def bootstrap_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> Interval:
    """The mean of ``values`` (one per subject) and its percentile bootstrap interval.

    ``n_resamples`` resamples of the ``n`` finite values, each drawn with replacement (``n`` of them); the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.
    Non-finite values (metrics a subject cannot define) are left out and ``n`` counts the rest.

    Raises:
        DataError: ``confidence`` outside (0, 1) or ``n_resamples < 1``.
    """
    if not 0.0 < confidence < 1.0 or n_resamples < 1:
        raise DataError(f"bootstrap_ci: confidence must be in (0, 1) and n_resamples >= 1, got {confidence}, "
                        f"{n_resamples}")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if x.size == 1:
        return Interval(float(x[0]), math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)  # [R, n] -> [R]
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(x.mean()), float(low), float(high), int(x.size))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm, 1979): the i-th smallest of ``m`` p-values times ``m - i``, made
    monotone and capped at 1; NaN entries stay NaN and do not count in ``m``."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = order.size, 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out.tolist()


def paired_wilcoxon(scores: Mapping[str, Mapping[str, float]]) -> list[PairTest]:
    """Two-sided Wilcoxon signed-rank tests between every pair of rows, paired by subject.

    Each pair uses the subjects that both rows score with a finite value. Zero differences are dropped
    (``zero_method="wilcox"``); when every difference is zero the rows agree on every subject and the test
    gives ``statistic = 0``, ``p = 1`` (what ``scipy.stats.wilcoxon`` answers, without its warning). The
    p-values are then adjusted together with :func:`holm`.

    Args:
        scores: ``{row name: {subject: value}}``, e.g. per-subject balanced accuracy of each model.

    Returns:
        One :class:`PairTest` per unordered pair, in the rows' order.
    """
    from scipy.stats import wilcoxon

    tests = []
    for a, b in itertools.combinations(list(scores), 2):
        shared = [s for s in scores[a] if s in scores[b]
                  and math.isfinite(scores[a][s]) and math.isfinite(scores[b][s])]
        x = np.array([scores[a][s] for s in shared])
        y = np.array([scores[b][s] for s in shared])
        if not shared:
            tests.append(PairTest(a, b, 0, math.nan, math.nan, math.nan))
            continue
        diff = x - y
        if np.all(diff == 0):
            stat, p = 0.0, 1.0
        else:
            res = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
            stat, p = float(res.statistic), float(res.pvalue)
        tests.append(PairTest(a, b, len(shared), float(diff.mean()), stat, p))
    adjusted = holm([t.p_value for t in tests])
    return [PairTest(t.a, t.b, t.n, t.mean_diff, t.statistic, t.p_value, q) for t, q in zip(tests, adjusted)]
