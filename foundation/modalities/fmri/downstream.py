"""Downstream evaluation of a SLIM-Brain encoder: linear probe and attentive probe on frozen tokens.

* linear probe (the usual frozen-encoder protocol of MAE/JEPA papers, e.g. He et al. 2021,
  https://arxiv.org/abs/2111.06377): mean-pooled frozen tokens -> :func:`foundation.eval.probe.fit_probe`;
* attentive probe (V-JEPA's evaluation, Bardes et al. 2024,
  https://arxiv.org/abs/2404.08471): one learned query cross-attends over the
  frozen tokens, then a linear head; trained on cached tokens;
* fine-tuning (full with layer-wise LR decay, LoRA, Dopamine) is the shared loop of
  :mod:`foundation.finetune`: ``foundation finetune --recipe slim-brain-tiny-probe`` from a checkpoint, or
  ``finetune_model(TaskModel.for_encoder(encoder, n_out, task), train, test, recipe, opts, out)`` in memory.

Every function splits by subject (:func:`foundation.data.splits.group_split`)
outside, takes index arrays and returns metrics from
:mod:`foundation.eval.metrics` (classification or regression).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError
from foundation.finetune.features import encode, extract_features, split_batch
from foundation.eval.metrics import classification_metrics, regression_metrics
from foundation.eval.probe import fit_probe

__all__ = ["frozen_tokens", "linear_probe", "AttentiveProbe", "attentive_probe", "DownstreamResult"]


@dataclass
class DownstreamResult:
    metrics: dict[str, float]
    y_true: torch.Tensor
    y_pred: torch.Tensor


def _loader(dataset: Any, idx: np.ndarray, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx.tolist()), batch_size=batch_size)


def _metrics(task: str, y: torch.Tensor, out: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    if task == "classification":
        prob = out.softmax(-1)
        return classification_metrics(y, prob), prob.argmax(-1)
    return regression_metrics(y, out.squeeze(-1)), out.squeeze(-1)


@torch.no_grad()
def frozen_tokens(encoder: nn.Module, dataset: Any, idx: np.ndarray, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen ``forward_features`` tokens [S, N, D] and labels [S] of ``dataset[idx]`` (eval mode)."""
    encoder.eval()
    xs, ys = [], []
    for batch in _loader(dataset, idx, batch_size):
        xs.append(encode(encoder, split_batch(batch)[0]).float())
        ys.append(batch["label"])
    return torch.cat(xs), torch.cat(ys)


def linear_probe(encoder: nn.Module, dataset: Any, train_idx: np.ndarray, test_idx: np.ndarray, *,
                 task: str = "classification", seed: int = 0, batch_size: int = 8) -> DownstreamResult:
    """Mean-pooled frozen features -> linear probe (``fit_probe(kind="linear")``)."""
    Xtr, ytr = extract_features(encoder, _loader(dataset, train_idx, batch_size))
    Xte, yte = extract_features(encoder, _loader(dataset, test_idx, batch_size))
    res = fit_probe(Xtr, ytr, Xte, yte, kind="linear", task=task, seed=seed)
    return DownstreamResult(res.metrics, yte, res.y_pred)


class AttentiveProbe(nn.Module):
    """One learned query cross-attends over tokens [B, N, D]; a linear head maps it to [B, n_out]."""

    def __init__(self, dim: int, n_out: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"AttentiveProbe: dim {dim} not divisible by num_heads {num_heads}")
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.head = nn.Linear(dim, n_out)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] -> [B, n_out]."""
        kv = self.norm(tokens)
        pooled, _ = self.attn(self.query.expand(tokens.shape[0], -1, -1), kv, kv, need_weights=False)  # [B, 1, D]
        return self.head(pooled[:, 0])


def attentive_probe(encoder: nn.Module, dataset: Any, train_idx: np.ndarray, test_idx: np.ndarray, *,
                    task: str = "classification", seed: int = 0, epochs: int = 100, lr: float = 3e-3,
                    batch_size: int = 8) -> DownstreamResult:
    """Frozen tokens -> :class:`AttentiveProbe` trained full-batch with AdamW from ``seed``."""
    Xtr, ytr = frozen_tokens(encoder, dataset, train_idx, batch_size)
    Xte, yte = frozen_tokens(encoder, dataset, test_idx, batch_size)
    mu, sd = Xtr.mean((0, 1)), Xtr.std((0, 1)) + 1e-6
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    torch.manual_seed(seed)
    n_out = int(ytr.max()) + 1 if task == "classification" else 1
    probe = AttentiveProbe(Xtr.shape[-1], n_out, num_heads=4 if Xtr.shape[-1] % 4 == 0 else 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(epochs):
        out = probe(Xtr)
        loss = F.cross_entropy(out, ytr) if task == "classification" else F.mse_loss(out.squeeze(-1), ytr.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval()
    with torch.no_grad():
        metrics, pred = _metrics(task, yte, probe(Xte))
    return DownstreamResult(metrics, yte, pred)
