"""The protocol statistics against scikit-learn and scipy: per-subject metrics, bootstrap intervals, Wilcoxon, Holm."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from foundation.errors import DataError
from foundation.eval.protocol import (
    bootstrap_ci,
    holm,
    paired_wilcoxon,
    per_subject_metrics,
)


def _predictions(n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    subjects = np.repeat([f"s{i}" for i in range(6)], 10)
    y = rng.integers(0, n_classes, subjects.size)
    logits = rng.normal(size=(subjects.size, n_classes)) + 1.5 * np.eye(n_classes)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, prob, subjects


@pytest.mark.parametrize("n_classes", [2, 3])
def test_per_subject_metrics_are_sklearns_on_each_subjects_items(n_classes):
    y, prob, subjects = _predictions(n_classes)
    y[:10] = 1  # subject s0: one class only
    got = per_subject_metrics(y, prob, subjects.tolist())
    assert list(got) == [f"s{i}" for i in range(6)]
    for s, m in got.items():
        rows = subjects == s
        pred = prob[rows].argmax(1)
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y[rows], pred))
        assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y[rows], pred))
        assert m["weighted_f1"] == pytest.approx(skm.f1_score(y[rows], pred, average="weighted", zero_division=0))
        if n_classes == 2:
            both = np.unique(y[rows]).size == 2
            assert (m["auroc"] == pytest.approx(skm.roc_auc_score(y[rows], prob[rows, 1]))) if both \
                else math.isnan(m["auroc"])
        else:
            assert "auroc" not in m


def test_a_one_class_subject_has_recall_as_balanced_accuracy_and_no_kappa_or_auroc():
    y = np.array([1, 1, 1, 1, 0, 1])
    prob = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    got = per_subject_metrics(y, prob, ["a"] * 4 + ["b"] * 2)
    assert got["a"]["balanced_accuracy"] == pytest.approx(0.75)  # recall of class 1
    assert math.isnan(got["a"]["auroc"]) and not math.isnan(got["a"]["cohen_kappa"])
    one = per_subject_metrics(np.array([1, 1]), np.array([[0.1, 0.9], [0.2, 0.8]]), ["c", "c"])["c"]
    assert one["balanced_accuracy"] == 1.0 and math.isnan(one["cohen_kappa"])  # p_e = 1: kappa undefined
    with pytest.raises(DataError, match="3 labels, 3 probability rows and 2 subjects"):
        per_subject_metrics(y[:3], prob[:3], ["a", "b"])


def test_bootstrap_interval_matches_scipys_percentile_bootstrap():
    x = np.random.default_rng(3).normal(0.6, 0.1, size=25)
    ours = bootstrap_ci(x, 0.95, n_resamples=40_000, seed=1)
    ref = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=40_000, method="percentile",
                          rng=np.random.default_rng(2)).confidence_interval
    assert ours.mean == pytest.approx(x.mean()) and ours.n == 25
    se = x.std(ddof=1) / np.sqrt(x.size)  # Monte Carlo error of either bound: about 0.02 se; a 90% level is 0.3 se off
    assert ours.low == pytest.approx(ref.low, abs=0.1 * se) and ours.high == pytest.approx(ref.high, abs=0.1 * se)
    assert ours.low < x.mean() < ours.high


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(300):
        iv = bootstrap_ci(rng.normal(0.5, 0.2, 40), n_resamples=2000, seed=i)
        covered += iv.low <= 0.5 <= iv.high
    assert 0.90 <= covered / 300 <= 0.98  # percentile intervals run slightly short at n = 40


def test_bootstrap_leaves_out_undefined_values_and_is_honest_about_tiny_samples():
    iv = bootstrap_ci([0.5, float("nan"), 0.7, 0.9], seed=0)
    assert iv.n == 3 and iv.mean == pytest.approx(0.7) and 0.5 <= iv.low < iv.high <= 0.9
    one = bootstrap_ci([0.4, float("nan")])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(bootstrap_ci([]).mean) and str(bootstrap_ci([])) == "n/a"
    assert bootstrap_ci([0.3, 0.5], seed=4) == bootstrap_ci([0.3, 0.5], seed=4)  # seeded
    with pytest.raises(DataError, match="confidence must be in"):
        bootstrap_ci([1.0, 2.0], confidence=95)


def test_holm_adjustment_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.5, float("nan"), 0.4])
    assert adjusted[0] == pytest.approx(0.8) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.8)
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_paired_wilcoxon_pairs_by_subject_and_matches_scipy():
    rng = np.random.default_rng(5)
    subjects = [f"s{i}" for i in range(12)]
    a = dict(zip(subjects, rng.uniform(0.3, 0.9, 12)))
    b = {s: a[s] - 0.05 + rng.normal(0, 0.04) for s in reversed(subjects)}  # another order: paired by name
    b["extra"] = 0.1  # a subject only row b scored is left out
    c = {s: v for s, v in a.items()}
    tests = paired_wilcoxon({"a": a, "b": b, "c": c})
    assert [(t.a, t.b) for t in tests] == [("a", "b"), ("a", "c"), ("b", "c")]
    ref = stats.wilcoxon([a[s] for s in subjects], [b[s] for s in subjects])
    ab = tests[0]
    assert ab.n == 12 and ab.p_value == pytest.approx(ref.pvalue) and ab.statistic == pytest.approx(ref.statistic)
    assert ab.mean_diff == pytest.approx(np.mean([a[s] - b[s] for s in subjects]))
    assert tests[1].p_value == 1.0 and tests[1].statistic == 0.0  # identical rows
    assert [t.p_holm for t in tests] == pytest.approx(holm([t.p_value for t in tests]))


def test_paired_wilcoxon_known_signal_has_the_exact_p_value():
    # every one of 10 subjects better by a distinct margin: W = 0, exact two-sided p = 2 / 2^10
    a = {f"s{i}": 0.5 + 0.01 * (i + 1) for i in range(10)}
    b = {s: 0.5 for s in a}
    (t,) = paired_wilcoxon({"better": a, "base": b})
    assert t.statistic == 0.0 and t.p_value == pytest.approx(2 / 2**10)
    nan = paired_wilcoxon({"x": {"s": float("nan")}, "y": {"s": 0.5}})[0]
    assert nan.n == 0 and math.isnan(nan.p_value) and math.isnan(nan.p_holm)
