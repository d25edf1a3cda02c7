"""Conditional computation for hard-gated units: a linear layer that skips inactive input columns.

After the hard gate 1[h > tau] (and an activation with act(0) = 0 such as
ReLU, GELU, SiLU), inactive units reach the next linear layer as exact zeros.
:class:`SkipInactiveLinear` finds the input columns that are non-zero for at
least one row of the batch, gathers those columns of the input and of the
weight (``index_select``) and multiplies only them:

    y = x[:, A] @ W[:, A]^T + b,   A = {j : x_rj != 0 for some row r}

which equals the dense product exactly (the skipped terms are 0 * w). The
active set is the union over the batch, so small batches skip more. It counts
the multiply-adds actually done against the dense count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SkipInactiveLinear", "MacCount"]


class MacCount:
    """Running multiply-add counts of one layer: ``done`` (with skipping) and ``dense`` (without)."""

    def __init__(self) -> None:
        self.done = 0
        self.dense = 0
        self.rows = 0
        self.active_entries = 0
        self.entries = 0

    def reset(self) -> None:
        self.__init__()


class SkipInactiveLinear(nn.Module):
    """Wraps an ``nn.Linear``; when ``skipping`` is on, computes only with the batch's non-zero input columns.

    Args:
        base_layer: the linear layer (kept, not copied).
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"SkipInactiveLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.skipping = False
        self.counts = MacCount()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Linear map that skips all-zero input columns when ``skipping`` is on.

        Args:
            x: [B, ..., D_in] input.

        Returns:
            [B, ..., D_out], equal to ``base_layer(x)``.
        """
        if not self.skipping:
            return self.base_layer(x)
        d_in, d_out = self.in_features, self.out_features
        rows = x.reshape(-1, d_in)  # [B, ..., D_in] -> [R, D_in]
        nonzero = rows.ne(0)
        active = nonzero.any(dim=0).nonzero().squeeze(1)  # [K] indices of columns used by some row
        k = int(active.numel())
        self.counts.rows += rows.shape[0]
        self.counts.done += rows.shape[0] * k * d_out
        self.counts.dense += rows.shape[0] * d_in * d_out
        self.counts.active_entries += int(nonzero.sum())
        self.counts.entries += rows.numel()
        if k == d_in:
            y = self.base_layer(rows)
        else:
            weight = self.base_layer.weight.index_select(1, active)  # [D_out, D_in] -> [D_out, K]
            y = F.linear(rows.index_select(1, active), weight, self.base_layer.bias)  # [R, K] -> [R, D_out]
        return y.reshape(*x.shape[:-1], d_out)  # [R, D_out] -> [B, ..., D_out]

    def extra_repr(self) -> str:
        return f"skipping={self.skipping}"
