"""Linear and small-MLP probes on frozen features (standardised inputs, full-batch AdamW)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.eval.metrics import classification_metrics, regression_metrics

__all__ = ["ProbeResult", "fit_probe"]


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


def fit_probe(X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor, *,
              kind: str = "linear", task: str = "classification", seed: int = 0, epochs: int = 300,
              lr: float = 1e-2, weight_decay: float = 1e-3, hidden: int = 256) -> ProbeResult:
    """Fit a probe on ``X_train [S, D]`` and score it on ``X_test``.

    Features are standardised with the training mean and std. ``"linear"`` is a
    single linear layer (multinomial logistic regression for classification);
    ``"mlp"`` adds one hidden GELU layer of ``hidden`` units with dropout 0.1.
    Both train full-batch with AdamW for ``epochs`` steps from seed ``seed``.

    Raises:
        ConfigError: unknown ``kind`` or ``task``.
        DataError: non-finite features or mismatched shapes.
    """
    if kind not in ("linear", "mlp"):
        raise ConfigError(f"probe kind {kind!r} unknown; valid: linear, mlp")
    if task not in ("classification", "regression"):
        raise ConfigError(f"probe task {task!r} unknown; valid: classification, regression")
    for name, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise DataError(f"probe {name} features {tuple(X.shape)} and labels {tuple(y.shape)} do not match")
        if not torch.isfinite(X).all():
            raise DataError(f"probe {name} features hold NaN or inf; check the encoder and the input data")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
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
    head = nn.Linear(d, n_out) if kind == "linear" else nn.Sequential(
        nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, n_out))
    for p in head.parameters():  # seeded init independent of the global RNG's history
        with torch.no_grad():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / d**0.5 if p.ndim > 1 else torch.zeros(p.shape))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(head(xtr), target).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        out = head(xte)
    if task == "classification":
        prob = out.softmax(-1)
        return ProbeResult(classification_metrics(y_test, prob), prob.argmax(-1), prob, head, mean, std)
    pred = (out * y_std + y_mean).reshape(y_test.shape)
    return ProbeResult(regression_metrics(y_test, pred), pred, None, head, mean, std, y_mean, y_std)
