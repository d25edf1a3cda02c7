"""Per-image formulas against direct computations (MONAI Dice, scipy Hausdorff, scikit-learn, torchvision IoU),
and the AUC rules of the two rule sets on hand-made edge cases (expected values written from the rules)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foundation.modalities.ultrasound.metrics import (
    binary_auc,
    box_iou,
    classification_scores,
    dice_score,
    hausdorff_distance,
    mean_radial_error,
    multiclass_auc,
)


def _maps(seed: int, C: int, shape=(24, 31)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    for k in range(1, C):
        y, x = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        gt[y:y + 6, x:x + 5] = k
        pred[y + rng.integers(-2, 3) % shape[0]:y + 7, x:x + 4 + rng.integers(0, 3)] = k
    return pred, gt


@pytest.mark.parametrize("seed,C", [(0, 2), (1, 3), (2, 4), (3, 5)])
def test_dice_matches_monai(seed, C):
    from monai.metrics import DiceMetric

    pred, gt = _maps(seed, C)
    onehot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a), C).permute(2, 0, 1)[None].float()
    ref = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)(onehot(pred), onehot(gt))
    assert dice_score(pred, gt, C) == pytest.approx(float(ref.mean()), abs=1e-6)  # [1, C-1] per class


def test_dice_empty_rules():
    z = np.zeros((8, 8), np.int64)
    one = z.copy()
    one[2:4, 2:4] = 1
    assert dice_score(z, z, 2) == 1.0
    assert dice_score(one, z, 2) == 0.0 and dice_score(z, one, 2) == 0.0


@pytest.mark.parametrize("seed,C", [(0, 2), (4, 3), (5, 4), (6, 5)])
def test_hausdorff_matches_scipy(seed, C):
    from scipy.spatial.distance import directed_hausdorff

    pred, gt = _maps(seed, C)
    per_class = []
    for k in range(1, C):
        a, b = np.argwhere(pred == k), np.argwhere(gt == k)
        if len(a) == 0 or len(b) == 0:  # a class overwritten by another: the official empty rules
            per_class.append(0.0 if len(a) == len(b) else math.hypot(*gt.shape))
            continue
        per_class.append(max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0]))
    assert hausdorff_distance(pred, gt, C) == pytest.approx(np.mean(per_class), rel=1e-6)


def test_hausdorff_empty_rules():
    z = np.zeros((30, 40), np.int64)
    one = z.copy()
    one[5, 5] = 1
    assert hausdorff_distance(z, z, 2) == 0.0
    assert hausdorff_distance(one, z, 2) == pytest.approx(50.0) == hausdorff_distance(z, one, 2)
    two = z.copy()
    two[5, 5] = 1
    two[0:3, 0:3] = 2
    # class 1 matches exactly (0), class 2 is missing from the prediction (the diagonal)
    assert hausdorff_distance(one, two, 3) == pytest.approx((0 + math.hypot(30, 40)) / 2)


@pytest.mark.parametrize("C,seed", [(2, 0), (3, 1), (6, 2), (8, 3)])
def test_classification_matches_sklearn(C, seed):
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        matthews_corrcoef,
        roc_auc_score,
    )

    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, 60)
    y[:C] = np.arange(C)  # every class present
    logits = rng.normal(size=(60, C)) + 1.5 * np.eye(C)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = classification_scores(y, prob)
    pred = prob.argmax(1)
    auc = roc_auc_score(y, prob[:, 1]) if C == 2 else roc_auc_score(y, prob, multi_class="ovr", average="macro")
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["auc"] == pytest.approx(auc)
    assert got["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(y, pred))


def test_classification_ties_and_degenerate_mcc():
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 1, 1, 0, 1])
    prob = np.array([[0.5, 0.5], [0.5, 0.5], [0.2, 0.8], [0.8, 0.2], [0.5, 0.5]])
    assert classification_scores(y, prob)["auc"] == pytest.approx(roc_auc_score(y, prob[:, 1]))
    constant = np.tile([[0.9, 0.1]], (5, 1))
    assert classification_scores(y, constant)["mcc"] == 0.0


def test_box_iou_matches_torchvision():
    from torchvision.ops import box_iou as tv_iou

    rng = np.random.default_rng(0)
    for _ in range(10):
        a = np.sort(rng.uniform(0, 50, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        b = np.sort(rng.uniform(0, 50, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        ref = tv_iou(torch.tensor(a)[None], torch.tensor(b)[None])[0, 0]
        assert box_iou(tuple(a), tuple(b)) == pytest.approx(float(ref), abs=1e-9)


def test_box_iou_by_hand():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)  # intersection 1, union 4 + 4 - 1
    assert box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0
    assert box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0  # empty union: 0, as the official evaluator


def test_binary_auc_with_ties_by_hand():
    # positives score .6, .6; negatives .2, .6: each positive beats .2 (1) and ties .6 (1/2) -> 3 of 4 pairs
    assert binary_auc(np.array([0, 1, 1, 0]), np.array([0.2, 0.6, 0.6, 0.6])) == pytest.approx(0.75)


def _probs(rows):
    return np.array(rows, dtype=np.float64)


@pytest.mark.parametrize("y,prob,official,strict", [
    # binary task whose truth holds one class: undefined -> official 0.0, strict NaN
    ([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], 0.0, math.nan),
    # a single sample
    ([0], [[0.7, 0.3]], 0.0, math.nan),
    # 3 classes, class 2 absent from the truth (even though the ranking is perfect)
    ([0, 1, 0, 1], [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]], 0.0, math.nan),
    # 3 classes, all present, each class ranked first by its own column: 1.0 under both
    ([0, 1, 2, 0], [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]], 1.0, 1.0),
    # 3 classes, all present, scores that do not sum to 1 (official: scikit-learn refuses -> 0.0)
    ([0, 1, 2], [[2.0, 0.1, 0.1], [0.1, 2.0, 0.1], [0.1, 0.1, 2.0]], 0.0, 1.0),
    # binary, both classes: the rules agree; one positive (.9) above both negatives (.1, .4) -> 1.0
    ([0, 1, 0], [[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]], 1.0, 1.0),
])
def test_auc_rules_on_edge_cases(y, prob, official, strict):
    y, prob = np.array(y), _probs(prob)
    assert multiclass_auc(y, prob, "official") == official
    got = multiclass_auc(y, prob, "strict")
    assert (math.isnan(got) and math.isnan(strict)) or got == pytest.approx(strict)
    assert classification_scores(y, prob, rules="official")["auc"] == official


def test_auc_rules_name_checked():
    with pytest.raises(ValueError, match="rules must be one of official, strict"):
        multiclass_auc(np.array([0, 1]), _probs([[0.5, 0.5], [0.5, 0.5]]), "lenient")


def test_mean_radial_error():
    pred = np.array([[0.0, 0.0], [3.0, 4.0]])
    gt = np.array([[3.0, 4.0], [3.0, 4.0]])
    assert mean_radial_error(pred, gt) == pytest.approx(2.5)
