import numpy as np
import pytest
import torch

from foundation.errors import DataError
from foundation.eval.metrics import classification_metrics, regression_metrics


def test_classification_metrics_against_direct_formulas():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    pred = torch.tensor([0, 1, 0, 1, 1, 2, 0, 2, 2, 2])
    prob = torch.nn.functional.one_hot(pred, 3).float() * 0.8 + 0.2 / 3
    m = classification_metrics(y, prob)
    recalls = [((pred == c) & (y == c)).sum().item() / (y == c).sum().item() for c in range(3)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    po = (pred == y).float().mean().item()
    pe = sum(((y == c).float().mean() * (pred == c).float().mean()).item() for c in range(3))
    assert m["cohen_kappa"] == pytest.approx((po - pe) / (1 - pe))
    f1 = []
    for c in range(3):
        tp = ((pred == c) & (y == c)).sum().item()
        prec, rec = tp / max((pred == c).sum().item(), 1), tp / (y == c).sum().item()
        f1.append(0 if tp == 0 else 2 * prec * rec / (prec + rec))
    weights = [(y == c).sum().item() / len(y) for c in range(3)]
    assert m["weighted_f1"] == pytest.approx(float(np.dot(f1, weights)))
    assert "auroc" in m


def test_binary_auroc_is_rank_statistic():
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    s = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    m = classification_metrics(y, torch.stack([1 - s, s], 1))
    pos, neg = s[y == 1], s[y == 0]
    direct = (pos[:, None] > neg[None, :]).float().mean().item()
    assert m["auroc"] == pytest.approx(direct)


def test_regression_metrics_closed_form():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = torch.tensor([1.5, 2.0, 2.5, 4.5])
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx(0.375) and m["rmse"] == pytest.approx((0.75 / 4) ** 0.5)
    assert m["r2"] == pytest.approx(1 - 0.75 / 5.0)


def test_bad_shapes():
    with pytest.raises(DataError, match="must be \\[S, C\\]"):
        classification_metrics(torch.tensor([0, 1]), torch.ones(3, 2))
    with pytest.raises(DataError, match="labels span"):
        classification_metrics(torch.tensor([0, 5]), torch.ones(2, 2) / 2)
