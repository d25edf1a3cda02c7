"""The EEG cache's subject runs (index ``subject_runs``): the subject filter without reading a shard."""
from __future__ import annotations

import itertools

import numpy as np

from foundation.modalities.eeg.cache import rows_of_subjects, subject_runs


def test_runs_rebuild_the_subject_array_and_the_filter_equals_isin():
    rng = np.random.default_rng(0)
    for _ in range(50):
        # recordings of random lengths, subjects repeating and interleaved (a subject's recordings apart)
        subjects = np.repeat(rng.integers(0, 5, 12), rng.integers(0, 7, 12)).astype(np.int64)
        runs = subject_runs(subjects)
        rebuilt = np.concatenate([np.full(n, s) for _, n, s in runs]) if runs else np.empty(0, np.int64)
        np.testing.assert_array_equal(rebuilt, subjects)
        assert all(a + n == b for (a, n, _), (b, _, _) in itertools.pairwise(runs))  # contiguous, in order
        assert all(s != t for (_, _, s), (_, _, t) in itertools.pairwise(runs))  # maximal: neighbours differ
        keep = sorted(set(rng.integers(0, 5, 2).tolist()))
        np.testing.assert_array_equal(rows_of_subjects(runs, keep),
                                      np.flatnonzero(np.isin(subjects, keep)))
    assert subject_runs(np.empty(0, np.int64)) == [] and len(rows_of_subjects([], [0])) == 0
