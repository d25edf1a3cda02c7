"""Conditional computation for hard-gated units: a linear layer that skips inactive input columns.

After the hard gate 1[h > tau] (and an activation with act(0) = 0 such as
ReLU, GELU, SiLU), inactive units reach the next linear layer as exact zeros.
:class:`SkipInactiveLinear` finds the input columns that are non-zero for at
least one row of the batch, gathers those columns of the input and of the
weight (``index_select``) and multiplies only them:

    y = x[:, A] @ W[:, A]^T + b,   A = {j : x_rj != 0 for some row r}

which equals the dense product exactly (the skipped terms are 0 * w). Two
strategies:

- ``"union"``: the active set A is the union over the rows of the batch; one
  ``index_select`` of the weight columns, one dense product. Small batches skip more.
- ``"per-row"``: each row uses only its own non-zero entries,
  y_r = b + sum_{j in A_r} x_rj W[:, j], computed by ``F.embedding_bag`` over a
  cached transposed copy of the (frozen) weight, which reads only the active
  rows of W^T: no copy of the weight per call. This is what pays off in wall
  time at batch 1 on wide layers; dense BLAS wins for large batches.

It counts the multiply-adds actually done against the dense count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SkipInactiveLinear", "MacCount", "SKIP_STRATEGIES"]

SKIP_STRATEGIES = ("union", "per-row")


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
        strategy: "union" (batch-union of active columns, ``index_select`` on the weight) or "per-row"
            (each row's own active entries, ``embedding_bag`` over a cached transposed weight).
    """

    def __init__(self, base_layer: nn.Linear, strategy: str = "union") -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"SkipInactiveLinear wraps nn.Linear, got {type(base_layer).__name__}")
        if strategy not in SKIP_STRATEGIES:
            raise ValueError(f"SkipInactiveLinear strategy {strategy!r}; valid: {', '.join(SKIP_STRATEGIES)}")
        self.strategy = strategy
        self._weight_t: tuple[tuple[int, int], torch.Tensor] | None = None
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
        n_rows, nnz = rows.shape[0], int(nonzero.sum())
        self.counts.rows += n_rows
        self.counts.dense += n_rows * d_in * d_out
        self.counts.active_entries += nnz
        self.counts.entries += rows.numel()
        if self.strategy == "per-row":
            self.counts.done += nnz * d_out
            y = self._per_row(rows, nonzero)
        else:
            active = nonzero.any(dim=0).nonzero().squeeze(1)  # [K] indices of columns used by some row
            k = int(active.numel())
            self.counts.done += n_rows * k * d_out
            if k == d_in:
                y = self.base_layer(rows)
            else:
                weight = self.base_layer.weight.index_select(1, active)  # [D_out, D_in] -> [D_out, K]
                y = F.linear(rows.index_select(1, active), weight, self.base_layer.bias)  # [R, K] -> [R, D_out]
        return y.reshape(*x.shape[:-1], d_out)  # [R, D_out] -> [B, ..., D_out]

    def _transposed_weight(self) -> torch.Tensor:
        """W^T [D_in, D_out], cached while the weight is unchanged (the base is frozen)."""
        weight = self.base_layer.weight
        key = (weight.data_ptr(), weight._version)
        if self._weight_t is None or self._weight_t[0] != key:
            self._weight_t = (key, weight.detach().t().contiguous())  # [D_out, D_in] -> [D_in, D_out]
        return self._weight_t[1]

    def _per_row(self, rows: torch.Tensor, nonzero: torch.Tensor) -> torch.Tensor:
        """y_r = b + sum over the non-zero entries j of row r of x_rj * W^T[j]; [R, D_in] -> [R, D_out]."""
        if torch.is_grad_enabled() and (rows.requires_grad or self.base_layer.weight.requires_grad):
            return self.base_layer(rows)  # autograd through the plain product; skipping is for inference
        index = nonzero.nonzero()  # [nnz, 2] (row, column), row-major so each row's entries are contiguous
        values = rows[index[:, 0], index[:, 1]]  # [nnz]
        offsets = torch.searchsorted(index[:, 0].contiguous(), torch.arange(rows.shape[0], device=rows.device))
        y = F.embedding_bag(index[:, 1], self._transposed_weight(), offsets, mode="sum", per_sample_weights=values)
        return y if self.base_layer.bias is None else y + self.base_layer.bias

    def extra_repr(self) -> str:
        return f"skipping={self.skipping}, strategy={self.strategy!r}"
