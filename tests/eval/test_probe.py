import numpy as np
import pytest
import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.finetune.features import extract_features
from foundation.finetune.llrd import depths_by_order, layerwise_lr_groups
from foundation.eval.probe import fit_probe
from foundation.eval.report import markdown_table, save_confusion_matrix, save_pred_vs_true
from foundation.data.splits import group_split


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    return centers[y] + torch.randn(n, 4, generator=g), y


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_separates_blobs(kind):
    Xtr, ytr = _blobs(300, 0)
    Xte, yte = _blobs(200, 1)
    res = fit_probe(Xtr, ytr, Xte, yte, kind=kind)
    assert res.metrics["balanced_accuracy"] > 0.95
    again = fit_probe(Xtr, ytr, Xte, yte, kind=kind)
    torch.testing.assert_close(res.y_prob, again.y_prob)  # seeded: reproducible


def test_probe_regression_recovers_linear_map():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 5, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 7
    res = fit_probe(X[:300], y[:300], X[300:], y[300:], task="regression")
    assert res.metrics["r2"] > 0.99 and res.regularisation_name == "alpha"
    fixed = fit_probe(X[:300], y[:300], X[300:], y[300:], task="regression", alpha=1e-6)
    assert fixed.metrics["r2"] > 0.999 and fixed.regularisation == 1e-6
    mlp = fit_probe(X[:300], y[:300], X[300:], y[300:], task="regression", kind="mlp", epochs=600, weight_decay=0.0)
    assert mlp.metrics["r2"] > 0.9 and mlp.regularisation_name == "weight_decay"
    with pytest.raises(ConfigError, match="weight_decay is the MLP probe's penalty"):
        fit_probe(X, y, X, y, task="regression", weight_decay=0.0)
    with pytest.raises(ConfigError, match="penalty is alpha, not C"):
        fit_probe(X, y, X, y, task="regression", C=1.0)


def test_binary_probe_and_a_class_absent_from_training():
    """Binary: scikit-learn's one logit becomes two softmax rows; a class only in the test labels is never predicted."""
    Xtr, ytr = _blobs(300, 0)
    Xte, yte = _blobs(200, 1)
    keep = ytr < 2
    res = fit_probe(Xtr[keep], ytr[keep], Xte, yte)
    assert res.y_prob.shape == (200, 3) and (res.y_pred < 2).all() and float(res.y_prob[:, 2].max()) < 1e-3
    two = yte < 2
    assert (res.y_pred[two] == yte[two]).float().mean() > 0.95
    with torch.no_grad():
        torch.testing.assert_close(res.as_linear()(Xte).softmax(-1), res.y_prob, rtol=1e-4, atol=1e-5)


def test_probe_as_linear_reads_raw_features():
    """The folded linear map on raw features gives the probe's own outputs (classification and regression)."""
    Xtr, ytr = _blobs(300, 0)
    Xte, yte = _blobs(200, 1)
    Xtr, Xte = Xtr * 5 + 3, Xte * 5 + 3  # far from standardised, so the folding matters
    res = fit_probe(Xtr, ytr, Xte, yte)
    with torch.no_grad():
        torch.testing.assert_close(res.as_linear()(Xte).softmax(-1), res.y_prob, rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    y2 = torch.stack([Xtr @ torch.randn(4, generator=g), Xtr @ torch.randn(4, generator=g) * 10 + 50], 1)
    reg = fit_probe(Xtr, y2, Xtr, y2, task="regression")
    with torch.no_grad():
        torch.testing.assert_close(reg.as_linear()(Xtr), reg.y_pred, rtol=1e-4, atol=1e-3)
    with pytest.raises(ConfigError, match="linear probe"):
        fit_probe(Xtr, ytr, Xte, yte, kind="mlp").as_linear()


def test_probe_bad_input():
    X, y = _blobs(10, 0)
    with pytest.raises(ConfigError, match="probe kind 'svm'"):
        fit_probe(X, y, X, y, kind="svm")
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fit_probe(bad, y, X, y)


class _Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 6)

    def forward_features(self, x):
        return self.proj(x)  # [B, N, 4] -> [B, N, 6]


def test_extract_features_mean_pools_tokens():
    enc = _Enc()
    x = torch.randn(10, 3, 4)
    y = torch.arange(10)
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=4)
    X, Y = extract_features(enc, loader)
    torch.testing.assert_close(X, enc.proj(x).mean(1).detach())
    assert torch.equal(Y, y) and enc.training


def test_llrd_scales_by_depth():
    model = nn.ModuleDict({"embed": nn.Linear(2, 2), "blocks": nn.ModuleList([nn.Linear(2, 2) for _ in range(3)]),
                           "head": nn.Linear(2, 2)})
    depths, n = depths_by_order(model, "blocks")  # embed (registered first) 0, blocks.i i + 1
    assert n == 3 and depths["embed.weight"] == 0 and depths["blocks.2.bias"] == 3
    groups = layerwise_lr_groups(model, 1e-3, decay=0.5, head_lr=1e-2, layer_of=depths.__getitem__, num_layers=n)
    scale = {g["name"]: g["lr_scale"] for g in groups}
    assert scale["layer0"] == pytest.approx(0.5**4) and scale["layer1"] == pytest.approx(0.5**3)
    assert scale["layer3"] == pytest.approx(0.5) and scale["head"] == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="decay must be in"):
        layerwise_lr_groups(model, 1e-3, decay=1.5, layer_of=lambda n: 0, num_layers=3)
    with pytest.raises(ConfigError, match="no module 'trunk'"):
        depths_by_order(model, "trunk")


def test_group_split_keeps_subjects_apart():
    subjects = [f"s{i % 7}" for i in range(70)]
    tr, te = group_split(subjects, 0.3, seed=1)
    assert not {subjects[i] for i in tr} & {subjects[i] for i in te}
    assert len(tr) + len(te) == 70 and len(te) > 0
    with pytest.raises(DataError, match="at least two groups"):
        group_split(["a"] * 5)


def test_reports(tmp_path):
    y = torch.tensor([0, 1, 1, 2])
    assert save_confusion_matrix(y, torch.tensor([0, 1, 2, 2]), ["a", "b", "c"], tmp_path / "cm.png").stat().st_size
    assert save_pred_vs_true(y.float(), y.float() + 0.1, tmp_path / "pv.png").stat().st_size
    table = markdown_table([{"model": "x", "acc": 0.5}, {"model": "y", "acc": 0.25, "kappa": 0.1}])
    assert table.splitlines()[0] == "| model | acc | kappa |" and "0.2500" in table


def test_pool_tokens_of_packed_tokens_and_feature_kwargs():
    from foundation.finetune.features import feature_kwargs, pool_tokens

    tokens = torch.randn(7, 5)  # [K, D]: sample 0 has 3 tokens, sample 1 has 4
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    torch.testing.assert_close(pool_tokens((tokens, cu), "mean"), torch.stack([tokens[:3].mean(0), tokens[3:].mean(0)]))
    torch.testing.assert_close(pool_tokens((tokens, cu), "cls"), tokens[[0, 3]])

    def fn(x, pos, chan_mask=None, keep=None):
        return x

    assert feature_kwargs(fn, {"x": 1, "pos": 2, "stats": 3}) == {"x": 1, "pos": 2}
    with pytest.raises(DataError, match=r"needs \['pos'\] but the batch has only \['stats', 'x'\]"):
        feature_kwargs(fn, {"x": 1, "stats": 3})


def _subject_data(seed, n_subjects=16, per_subject=15, d=40, n_classes=3):
    """Noisy classes in many dimensions with a subject offset: regularisation matters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.35, (n_classes, d))
    groups = np.repeat(np.arange(n_subjects), per_subject)
    y = rng.integers(0, n_classes, groups.size)
    X = centers[y] + rng.normal(0, 0.5, (n_subjects, d))[groups] + rng.normal(0, 1.0, (groups.size, d))
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y), groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_probe_matches_logistic_regression_cv(seed):
    """Same C grid, same subject folds, balanced-accuracy scoring: the test score equals scikit-learn's within 0.01."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    from foundation.eval.probe import CS_GRID

    X, y, groups = _subject_data(seed)
    train = groups < 11
    Xtr, ytr, Xte, yte, gtr = X[train], y[train], X[~train], y[~train], groups[train]
    res = fit_probe(Xtr, ytr, Xte, yte, groups=gtr, seed=seed)
    scaler = StandardScaler().fit(Xtr.double().numpy())
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(Xtr, ytr, groups=gtr))
    ref = LogisticRegressionCV(Cs=list(CS_GRID), cv=folds, scoring="balanced_accuracy", max_iter=5000, tol=1e-6)
    ref.fit(scaler.transform(Xtr.double().numpy()), ytr.numpy())
    ref_bacc = balanced_accuracy_score(yte.numpy(), ref.predict(scaler.transform(Xte.double().numpy())))
    assert res.regularisation_name == "C" and res.regularisation in CS_GRID
    assert abs(res.metrics["balanced_accuracy"] - ref_bacc) < 0.01, (res.metrics["balanced_accuracy"], ref_bacc)
    assert max(res.cv_scores, key=res.cv_scores.get) == res.regularisation
    fixed = fit_probe(Xtr, ytr, Xte, yte, C=res.regularisation)
    torch.testing.assert_close(fixed.y_prob, res.y_prob)  # C= skips the search and gives the same probe
    with torch.no_grad():  # the LP-FT head start still reads raw features
        torch.testing.assert_close(res.as_linear()(Xte).softmax(-1), res.y_prob, rtol=1e-4, atol=1e-5)


def test_probe_cv_needs_two_subjects_per_class():
    X, y, groups = _subject_data(0, n_subjects=4)
    y = torch.tensor(groups % 2)
    y[groups == 0] = 2  # class 2 in one training subject only
    with pytest.raises(DataError, match="give C="):
        fit_probe(X, y, X, y, groups=groups)
