"""Group-disjoint splits: no subject (or patient, or scanner) on both sides, every class on both sides.

With labels, the split is scikit-learn's ``StratifiedGroupKFold`` (shuffled by ``seed``): each
group lands wholly in train or in test and the class proportions are kept as far as the groups
allow. A class that no split can put on both sides (it has fewer than two groups, or the
k-fold found no fold holding it on both sides) raises :class:`~foundation.errors.DataError`
naming the class: a test side without a class makes its per-class metrics (AUROC) vanish.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foundation.errors import DataError

__all__ = ["group_split", "group_kfold"]


def _as_groups(groups: Sequence, fn: str) -> np.ndarray:
    labels = np.asarray([str(g) for g in groups])
    if np.unique(labels).size < 2:
        raise DataError(f"{fn}: need at least two groups (subjects) to hold one out, got {np.unique(labels).tolist()}")
    return labels


def _check_labels(groups: np.ndarray, labels: Sequence, n_splits: int, fn: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != groups.shape:
        raise DataError(f"{fn}: {y.shape[0] if y.ndim else 0} labels for {groups.shape[0]} samples; give one label per sample")
    for cls in np.unique(y):
        n_groups = np.unique(groups[y == cls]).size
        if n_groups < 2:
            raise DataError(
                f"{fn}: class {cls.item()!r} occurs in {n_groups} group (subject) only, so it cannot be on both the train "
                "and the test side; add subjects of that class or drop it before splitting")
    if n_splits > np.unique(groups).size:
        raise DataError(f"{fn}: {n_splits} folds for {np.unique(groups).size} groups; use fewer folds")
    return y


def _missing(y: np.ndarray, idx: np.ndarray, classes: np.ndarray) -> list:
    return sorted(set(classes.tolist()) - set(y[idx].tolist()))


def group_kfold(groups: Sequence, n_splits: int = 5, seed: int = 0,
                labels: Sequence | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group k-fold: each group in exactly one test fold; stratified by ``labels`` when given.

    With labels this is ``sklearn.model_selection.StratifiedGroupKFold(n_splits, shuffle=True,
    random_state=seed)``; without, ``GroupKFold`` over groups shuffled by ``seed``.

    Args:
        groups: the group (e.g. subject id) of every sample, ``[N]``.
        n_splits: number of folds, 2 to the number of groups.
        seed: shuffle seed.
        labels: the class of every sample, ``[N]`` (subject-level or sample-level).

    Returns:
        ``n_splits`` pairs ``(train_idx, test_idx)`` of sorted integer arrays.

    Raises:
        DataError: fewer than two groups, more folds than groups, a class held by a single group,
            or a fold whose train or test side misses a class.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    g = _as_groups(groups, "group_kfold")
    if n_splits < 2:
        raise DataError(f"group_kfold: n_splits must be >= 2, got {n_splits}")
    if labels is None:
        uniq = np.unique(g)
        if n_splits > uniq.size:
            raise DataError(f"group_kfold: {n_splits} folds for {uniq.size} groups; use fewer folds")
        perm = {k: i for i, k in enumerate(np.random.default_rng(seed).permutation(uniq))}
        codes = np.array([perm[k] for k in g])
        return [(np.sort(tr), np.sort(te)) for tr, te in GroupKFold(n_splits).split(g, groups=codes)]
    y = _check_labels(g, labels, n_splits, "group_kfold")
    classes = np.unique(y)
    folds = [(np.sort(tr), np.sort(te))
             for tr, te in StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(g, y, groups=g)]
    for i, (tr, te) in enumerate(folds):
        for side, idx in (("train", tr), ("test", te)):
            if miss := _missing(y, idx, classes):
                raise DataError(f"group_kfold: fold {i} of {n_splits} (seed {seed}) has no sample of class(es) {miss} on "
                                f"its {side} side: too few subjects of those classes for {n_splits} folds; use fewer folds")
    return folds


def group_split(groups: Sequence, test_fraction: float = 0.25, seed: int = 0,
                labels: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices so that each group lands wholly in train or in test.

    Without ``labels``: groups are shuffled with ``seed`` and taken into the test side until it
    holds ``round(test_fraction * n_groups)`` of them (at least one, and at least one left for training).

    With ``labels``: the first fold of ``StratifiedGroupKFold(round(1 / test_fraction), shuffle=True,
    random_state=seed)`` whose train and test sides both hold every class (scikit-learn's fold 0 in
    nearly every case); every class is then on both sides.

    Args:
        groups: the group (e.g. subject id) of every sample.
        test_fraction: share of groups held out, in (0, 1).
        seed: shuffle seed.
        labels: the class of every sample (classification tasks); stratifies the split.

    Returns:
        ``(train_idx, test_idx)``, sorted integer arrays.

    Raises:
        DataError: fewer than two groups, a fraction outside (0, 1), or (with labels) a class held
            by a single group or that no fold puts on both sides.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"group_split: test_fraction must be in (0, 1), got {test_fraction}")
    g = _as_groups(groups, "group_split")
    uniq = np.unique(g)
    if labels is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        n_splits = min(max(2, round(1 / test_fraction)), uniq.size)
        y = _check_labels(g, labels, n_splits, "group_split")
        classes = np.unique(y)
        for tr, te in StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(g, y, groups=g):
            if not _missing(y, tr, classes) and not _missing(y, te, classes):
                return np.sort(tr), np.sort(te)
        raise DataError(f"group_split: no stratified group split (seed {seed}, {n_splits} folds) keeps every class "
                        f"{classes.tolist()} on both sides with these {uniq.size} groups; try another seed, a larger "
                        "test_fraction or more subjects per class")
    rng = np.random.default_rng(seed)
    order = rng.permutation(uniq)
    n_test = min(max(1, round(test_fraction * uniq.size)), uniq.size - 1)
    test_groups = set(order[:n_test])
    is_test = np.array([x in test_groups for x in g])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
