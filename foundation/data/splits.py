"""Group-disjoint splits: no subject (or patient, or scanner) on both sides."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foundation.errors import DataError

__all__ = ["group_split"]


def group_split(groups: Sequence, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices so that each group lands wholly in train or in test.

    Groups are shuffled with ``seed`` and taken into the test side until it holds at
    least ``test_fraction`` of the groups (at least one, and at least one left for training).

    Args:
        groups: the group (e.g. subject id) of every sample.
        test_fraction: share of groups held out, in (0, 1).
        seed: shuffle seed.

    Returns:
        ``(train_idx, test_idx)``, sorted integer arrays.

    Raises:
        DataError: fewer than two groups, or a fraction outside (0, 1).
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"group_split: test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray([str(g) for g in groups])
    uniq = np.unique(labels)
    if uniq.size < 2:
        raise DataError(f"group_split: need at least two groups (subjects) to hold one out, got {uniq.tolist()}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(uniq)
    n_test = min(max(1, round(test_fraction * uniq.size)), uniq.size - 1)
    test_groups = set(order[:n_test])
    is_test = np.array([g in test_groups for g in labels])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
