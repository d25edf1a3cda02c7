"""Linear and small-MLP probes on frozen features (standardised inputs).

The linear probe is scikit-learn's L2 logistic / ridge regression with its penalty chosen by
cross-validation inside the training subjects; the MLP trains full-batch with AdamW.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.eval.metrics import classification_metrics, regression_metrics

__all__ = ["ProbeResult", "fit_probe", "CS_GRID", "ALPHA_GRID"]


@dataclass
class ProbeResult:
    """What a probe scored on the test features, and the probe (on standardised features)."""

    metrics: dict[str, float]
    y_pred: torch.Tensor  # [S] classes, or [S] / [S, T] values
    y_prob: torch.Tensor | None  # [S, C] for classification
    model: nn.Module
    x_mean: torch.Tensor | None = None  # [D] training-feature mean the probe's inputs were centred with
    x_std: torch.Tensor | None = None  # [D] training-feature std they were scaled with
    y_mean: torch.Tensor | None = None  # [T] regression: target mean (outputs are standardised targets)
    y_std: torch.Tensor | None = None  # [T] regression: target std
    regularisation_name: str = ""  # "C" (logistic), "alpha" (ridge) or "weight_decay" (MLP)
    regularisation: float | None = None  # the value used: chosen by CV inside the training set for a linear probe
    cv_scores: dict[float, float] = field(default_factory=dict)  # linear classifier: mean CV balanced accuracy per C

    def as_linear(self) -> nn.Linear:
        """A linear probe as one ``nn.Linear`` on raw features: ``[S, D] -> [S, C]`` logits or ``[S, T]`` values.

        Folds the input standardisation (and, for regression, the target scaling) into the weights:
        ``W' = diag(y_std) W diag(1 / x_std)``, ``b' = y_std * (b - W (x_mean / x_std)) + y_mean``.

        Raises:
            ConfigError: the probe is an MLP (no single linear map).
        """
        if not isinstance(self.model, nn.Linear) or self.x_mean is None or self.x_std is None:
            raise ConfigError("as_linear needs a linear probe (kind='linear')")
        with torch.no_grad():
            w = self.model.weight / self.x_std  # [C, D]
            b = self.model.bias - w @ self.x_mean  # [C]
            if self.y_std is not None and self.y_mean is not None:
                w, b = w * self.y_std[:, None], b * self.y_std + self.y_mean
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        return lin


CS_GRID = tuple(float(c) for c in np.logspace(-4, 4, 10))  # LogisticRegressionCV's default Cs=10
ALPHA_GRID = tuple(float(a) for a in np.logspace(-3, 5, 9))  # ridge penalties searched for regression


def _cv_folds(y: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int, classify: bool) -> list:
    """CV folds inside the training set: by group (subject) when ``groups`` is given."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if groups is not None:
        if groups.shape[0] != y.shape[0]:
            raise DataError(f"probe: {groups.shape[0]} training groups for {y.shape[0]} training samples")
        if classify:
            k = min(n_folds, min(np.unique(groups[y == c]).size for c in np.unique(y)))
        else:
            k = min(n_folds, np.unique(groups).size)
        if k < 2:
            raise DataError(f"probe: cannot choose the regularisation by cross-validation inside the training subjects: "
                            f"a class has {k} training subject(s); give C= (or alpha=) explicitly, or more subjects")
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed) if classify else GroupKFold(k)
        return list(cv.split(np.zeros(len(y)), y, groups=groups))
    if classify:
        k = min(n_folds, int(np.unique(y, return_counts=True)[1].min()))
    else:
        k = min(n_folds, len(y))
    if k < 2:
        raise DataError("probe: cannot choose the regularisation by cross-validation: a class has fewer than two "
                        "training samples; give C= (or alpha=) explicitly")
    cv = StratifiedKFold(k, shuffle=True, random_state=seed) if classify else KFold(k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y))


def _linear_sklearn(xtr: torch.Tensor, target: torch.Tensor, n_out: int, task: str, seed: int,
                    groups: np.ndarray | None, n_folds: int, C: float | None, alpha: float | None,
                    ) -> tuple[nn.Linear, str, float, dict[float, float]]:
    """The linear probe solved by scikit-learn (L2 logistic / ridge), its penalty chosen by CV; as an ``nn.Linear``."""
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV

    X = xtr.double().numpy()
    y = target.numpy()
    head = nn.Linear(X.shape[1], n_out)
    if task == "classification":
        present = np.unique(y)
        if present.size < 2:
            raise DataError(f"probe: the training labels hold one class only ({present.tolist()}); need two or more")
        if C is None:  # LogisticRegressionCV's search: mean fold score per C, the first best, refit on all
            from sklearn.metrics import balanced_accuracy_score

            folds = _cv_folds(y, groups, n_folds, seed, classify=True)
            scores = np.zeros((len(folds), len(CS_GRID)))
            for i, (tr, va) in enumerate(folds):
                for j, c in enumerate(CS_GRID):
                    fold_clf = LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(X[tr], y[tr])
                    scores[i, j] = balanced_accuracy_score(y[va], fold_clf.predict(X[va]))
            cv_scores = {c: float(v) for c, v in zip(CS_GRID, scores.mean(0))}
            C = CS_GRID[int(np.argmax(scores.mean(0)))]
        else:
            cv_scores = {}
        clf = LogisticRegression(C=C, max_iter=5000, tol=1e-6).fit(X, y)
        chosen = float(C)
        coef, bias = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
        if present.size == 2:  # one logit w.x + b for class 1: softmax over (0, w.x + b)
            coef, bias = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, bias[0]])
        w = np.zeros((n_out, X.shape[1]))
        b = np.full(n_out, bias.min() - 10.0)  # a class absent from training is never predicted
        w[present], b[present] = coef, bias
        name = "C"
    else:
        if alpha is None:
            folds = _cv_folds(y, groups, n_folds, seed, classify=False)
            reg = RidgeCV(alphas=list(ALPHA_GRID), cv=folds).fit(X, y)
            chosen, cv_scores = float(reg.alpha_), {}
        else:
            reg = Ridge(alpha=alpha).fit(X, y)
            chosen, cv_scores = float(alpha), {}
        w, b = np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_)
        name = "alpha"
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float())
        head.bias.copy_(torch.from_numpy(b).float())
    return head, name, chosen, cv_scores


def fit_probe(X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor, *,
              kind: str = "linear", task: str = "classification", seed: int = 0, epochs: int = 300,
              lr: float = 1e-2, weight_decay: float | None = None, hidden: int = 256, groups=None, n_folds: int = 5,
              C: float | None = None, alpha: float | None = None) -> ProbeResult:
    """Fit a probe on ``X_train [S, D]`` and score it on ``X_test``.

    Features are standardised with the training mean and std.

    ``"linear"`` is L2-regularised multinomial logistic regression (classification) or ridge
    regression on standardised targets, solved by scikit-learn (``LogisticRegressionCV`` /
    ``RidgeCV``). The penalty is chosen by ``n_folds``-fold cross-validation inside the training
    set over :data:`CS_GRID` (``C``, scored by balanced accuracy, as ``LogisticRegressionCV``) or :data:`ALPHA_GRID`
    (``alpha``): folds split by ``groups`` (the training subjects, so no subject is on both
    sides of a CV fold) when given, by sample otherwise. ``C`` / ``alpha`` fix the penalty
    instead. The chosen value is in ``ProbeResult.regularisation``.

    ``"mlp"`` adds one hidden GELU layer of ``hidden`` units with dropout 0.1 and trains
    full-batch with AdamW (``lr``, ``weight_decay``) for ``epochs`` steps from seed ``seed``.

    Args:
        X_train: training features ``[S, D]``.
        y_train: training labels ``[S]`` (class indices) or targets ``[S]`` / ``[S, T]``.
        X_test: test features ``[S', D]``.
        y_test: test labels or targets.
        kind: ``"linear"`` or ``"mlp"``.
        task: ``"classification"`` or ``"regression"``.
        seed: seed of the CV folds and of the MLP.
        epochs: MLP optimisation steps.
        lr: MLP learning rate.
        weight_decay: MLP AdamW weight decay (None: 1e-3); the linear probe's penalty is ``C`` / ``alpha``.
        hidden: MLP hidden width.
        groups: the group (subject) of every training sample ``[S]``, for the CV folds.
        n_folds: CV folds (fewer when a class has fewer training groups / samples).
        C: fixed inverse L2 strength of the linear classifier (no CV).
        alpha: fixed ridge penalty of the linear regressor (no CV).

    Returns:
        The test metrics, predictions and the fitted probe.

    Raises:
        ConfigError: unknown ``kind`` or ``task``, or a penalty the probe does not have (``weight_decay``
            for a linear probe, ``C`` / ``alpha`` for an MLP, ``C`` for regression, ``alpha`` for classification).
        DataError: non-finite features, mismatched shapes, one training class only, or too few
            training subjects / samples per class to cross-validate.
    """
    if kind not in ("linear", "mlp"):
        raise ConfigError(f"probe kind {kind!r} unknown; valid: linear, mlp")
    if task not in ("classification", "regression"):
        raise ConfigError(f"probe task {task!r} unknown; valid: classification, regression")
    if kind == "linear" and weight_decay is not None:
        raise ConfigError("probe: weight_decay is the MLP probe's penalty; the linear probe's is C (classification) or "
                          "alpha (regression), chosen by cross-validation when not given")
    if kind == "mlp" and (C is not None or alpha is not None):
        raise ConfigError("probe: C / alpha are the linear probe's penalties; the MLP probe takes weight_decay")
    if (task == "classification" and alpha is not None) or (task == "regression" and C is not None):
        raise ConfigError(f"probe: a {task} probe's penalty is {'C' if task == 'classification' else 'alpha'}, "
                          f"not {'alpha' if task == 'classification' else 'C'}")
    for name, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise DataError(f"probe {name} features {tuple(X.shape)} and labels {tuple(y.shape)} do not match")
        if not torch.isfinite(X).all():
            raise DataError(f"probe {name} features hold NaN or inf; check the encoder and the input data")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    X_train, X_test = X_train.float(), X_test.float()
    mean, std = X_train.mean(0), X_train.std(0).clamp_min(1e-6)
    xtr, xte = (X_train - mean) / std, (X_test - mean) / std
    if task == "classification":
        n_out = int(max(y_train.max(), y_test.max()).item()) + 1
        target = y_train.long()
        loss_fn: nn.Module = nn.CrossEntropyLoss()
    else:
        y_tr = y_train.float().reshape(len(y_train), -1)
        y_mean, y_std = y_tr.mean(0), y_tr.std(0).clamp_min(1e-6)
        target = (y_tr - y_mean) / y_std
        n_out = target.shape[1]
        loss_fn = nn.MSELoss()
    d = xtr.shape[1]
    if kind == "linear":
        grp = None if groups is None else np.asarray(groups)
        head, reg_name, reg_value, cv_scores = _linear_sklearn(xtr, target, n_out, task, seed, grp, n_folds, C, alpha)
    else:
        head = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, n_out))
        for p in head.parameters():  # seeded init independent of the global RNG's history
            with torch.no_grad():
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / d**0.5 if p.ndim > 1 else torch.zeros(p.shape))
        weight_decay = 1e-3 if weight_decay is None else weight_decay
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        head.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss_fn(head(xtr), target).backward()
            opt.step()
        reg_name, reg_value, cv_scores = "weight_decay", float(weight_decay), {}
    head.eval()
    with torch.no_grad():
        out = head(xte)
    extra = dict(regularisation_name=reg_name, regularisation=reg_value, cv_scores=cv_scores)
    if task == "classification":
        prob = out.softmax(-1)
        return ProbeResult(classification_metrics(y_test, prob), prob.argmax(-1), prob, head, mean, std, **extra)
    pred = (out * y_std + y_mean).reshape(y_test.shape)
    return ProbeResult(regression_metrics(y_test, pred), pred, None, head, mean, std, y_mean, y_std, **extra)
