"""Stratified group splits against scikit-learn's StratifiedGroupKFold."""
import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from foundation.data.splits import group_kfold, group_split
from foundation.errors import DataError


def _subjects(n_subjects=12, n_classes=3, per_subject=5):
    groups = np.repeat([f"s{i}" for i in range(n_subjects)], per_subject)
    labels = np.repeat(np.arange(n_subjects) % n_classes, per_subject)  # subject-level labels
    return groups, labels


def test_stratified_split_keeps_every_class_on_both_sides_over_200_seeds():
    groups, labels = _subjects()
    unstratified_misses = 0
    for seed in range(200):
        tr, te = group_split(groups, 0.25, seed, labels=labels)
        assert not set(groups[tr]) & set(groups[te]) and len(tr) + len(te) == len(groups)
        assert set(labels[tr]) == set(labels[te]) == {0, 1, 2}
        tr0, te0 = group_split(groups, 0.25, seed)
        unstratified_misses += set(labels[te0]) != {0, 1, 2}
    assert unstratified_misses > 100  # the 142 of 200: why labels matter


def test_stratified_split_is_sklearns_first_fold():
    groups, labels = _subjects()
    tr, te = group_split(groups, 0.25, 7, labels=labels)
    ref_tr, ref_te = next(StratifiedGroupKFold(4, shuffle=True, random_state=7).split(groups, labels, groups=groups))
    np.testing.assert_array_equal(tr, np.sort(ref_tr))
    np.testing.assert_array_equal(te, np.sort(ref_te))


def test_group_kfold_matches_sklearn_and_covers_every_sample_once():
    groups, labels = _subjects()
    folds = group_kfold(groups, 3, seed=2, labels=labels)
    ref = list(StratifiedGroupKFold(3, shuffle=True, random_state=2).split(groups, labels, groups=groups))
    for (tr, te), (rtr, rte) in zip(folds, ref):
        np.testing.assert_array_equal(te, np.sort(rte))
        np.testing.assert_array_equal(tr, np.sort(rtr))
        assert set(labels[te]) == {0, 1, 2}
    assert np.array_equal(np.sort(np.concatenate([te for _, te in folds])), np.arange(len(groups)))
    plain = group_kfold(groups, 4, seed=0)
    assert np.array_equal(np.sort(np.concatenate([te for _, te in plain])), np.arange(len(groups)))
    for tr, te in plain:
        assert not set(groups[tr]) & set(groups[te])


def test_a_class_that_cannot_be_represented_is_named():
    groups, labels = _subjects()
    labels = labels.copy()
    labels[groups == "s0"] = 9  # class 9 lives in one subject only
    with pytest.raises(DataError, match="class 9 occurs in 1 group"):
        group_split(groups, 0.25, 0, labels=labels)
    groups, labels = _subjects(6, 3)  # two subjects per class: three folds cannot all hold every class in train
    with pytest.raises(DataError, match="has no sample of class"):
        group_kfold(groups, 3, labels=labels)
    with pytest.raises(DataError, match="5 labels for 60 samples"):
        group_split(_subjects()[0], 0.25, 0, labels=[0] * 5)
