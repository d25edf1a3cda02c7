"""Deletion curves: accuracy as the most-attributed input units are removed, against removing random ones.

Samek et al., "Evaluating the visualization of what a deep neural network has learned" (MoRF / pixel
flipping, https://arxiv.org/abs/1509.06321). Units are what a person reads off the explanation: EEG channels,
fMRI voxels (whole time series), ultrasound pixels. For each fraction f of a sample's valid units, the top
``round(f * n_valid)`` by attribution are set to zero and the accuracy of the model over the samples is
recorded. The random curve ranks the units by uniform noise. The *area between the curves* (random minus
method, trapezoid rule over the fractions, divided by the largest fraction) is positive when the method
finds the units the model needs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["FRACTIONS", "area_between", "deletion_curve"]

FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


@torch.no_grad()
def deletion_curve(net: Callable[[torch.Tensor, slice], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   scores: torch.Tensor, valid: torch.Tensor,
                   remove: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   fractions: Sequence[float] = FRACTIONS, batch: int = 16) -> list[float]:
    """Accuracy at each deletion fraction.

    Args:
        net: ``(x rows, their slice of the items) -> logits [s, K]`` (the slice picks each row's fixed entries).
        x: inputs ``[S, ...]``; y: labels ``[S]``.
        scores: attribution per unit ``[S, U]`` (higher = removed first).
        valid: ``[S, U]`` units that exist (padded channels, voxels outside the brain: False, never removed).
        remove: ``(x [s, ...], drop [s, U] bool) -> x`` with the dropped units zeroed.
        fractions: shares of each sample's valid units to remove.
    """
    scores = torch.where(valid, scores.float(), torch.full_like(scores, -float("inf")))
    order = scores.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))  # rank of each unit
    n_valid = valid.sum(1)
    acc = []
    for f in fractions:
        k = torch.round(f * n_valid.float()).long()
        drop = rank < k[:, None]
        correct = 0
        for a in range(0, len(x), batch):
            sl = slice(a, min(a + batch, len(x)))
            correct += int((net(remove(x[sl], drop[sl]), sl).argmax(-1) == y[sl]).sum())
        acc.append(correct / len(x))
    return acc


def area_between(method: Sequence[float], random: Sequence[float], fractions: Sequence[float] = FRACTIONS) -> float:
    """Area between the random and the method's deletion curves over the fractions, per unit of fraction."""
    diff = np.asarray(random, float) - np.asarray(method, float)
    return float(np.trapezoid(diff, np.asarray(fractions, float)) / max(fractions))
