"""Token layout of Hiera in N dimensions: mask units, the unroll order inside a unit, foreground units.

Hiera (Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
Bells-and-Whistles", https://arxiv.org/abs/2306.00989) "unrolls" the token grid
so that every q-pooling step is a view plus a max over the outermost axis. With
q stride s (per dimension) and L unroll steps, a token at grid position p (per
dimension) is written as p = r1 + s (r2 + s (... + s (rL + s u))): u is its mask
unit, r1 the finest stride digit. Hiera's order for one sample is
[r1, r2, ..., rL, u] (outermost first, each group over all dimensions); the
mask unit is the innermost axis.

Here the tokens of a sample are stored unit-major instead, [U, T_u] with the
order [r1, ..., rL] inside a unit: a unit's tokens are contiguous, so deleting
masked (or background-only) units is an index into the first axis, mask-unit
attention is attention inside each row, and pooling is
``x.view(U, s, T_u / s, D).max(1)`` exactly as in Hiera. Global attention is
permutation-equivariant, so the two orders give the same tokens, permuted
(:func:`hiera_to_units` converts).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["unit_permutation", "hiera_to_units", "unit_foreground"]


def unit_permutation(tokens: Sequence[int], q_stride: Sequence[int], n_unroll: int) -> np.ndarray:
    """Flat token indices (row-major over ``tokens``) in unit-major, within-unit-unrolled order.

    Args:
        tokens: the token grid, e.g. (T, Z, Y, X).
        q_stride: the pooling stride per dimension.
        n_unroll: L, the number of unroll steps (stages - 1); a mask unit spans q_stride ** L tokens per dimension.

    Returns:
        perm [N] int64 such that ``x[:, perm]`` ([B, N, D]) views as [B, U, T_u, D].
    """
    n = len(tokens)
    mu = [s**n_unroll for s in q_stride]
    shape: list[int] = []
    for t, m, s in zip(tokens, mu, q_stride):
        shape += [t // m] + [s] * n_unroll  # axis d -> (u, rL, ..., r1)
    idx = np.arange(math.prod(tokens)).reshape(shape)
    width = n_unroll + 1
    order = [d * width for d in range(n)]  # u over all dims
    for k in range(1, n_unroll + 1):  # r1 (axis offset L) ... rL (offset 1)
        order += [d * width + (width - k) for d in range(n)]
    return idx.transpose(order).reshape(-1)


def hiera_to_units(x: torch.Tensor, n_units: int) -> torch.Tensor:
    """Hiera's token order [B, (T_u, U), D] (unit innermost) -> ours [B, U, T_u, D]."""
    B, N, D = x.shape
    return x.view(B, N // n_units, n_units, D).transpose(1, 2)  # [B, T_u, U, D] -> [B, U, T_u, D]


def unit_foreground(mask: np.ndarray, unit_voxels: Sequence[int]) -> np.ndarray:
    """Which spatial mask units hold at least one brain voxel.

    Args:
        mask: brain mask [Z, Y, X] bool (the crop of the encoder's input).
        unit_voxels: voxels per unit along (Z, Y, X) (= patch size x mask unit size).

    Returns:
        [Uz * Uy * Ux] bool, row-major over the unit grid.
    """
    uz, uy, ux = (s // v for s, v in zip(mask.shape, unit_voxels))
    vz, vy, vx = unit_voxels
    m = mask[: uz * vz, : uy * vy, : ux * vx].reshape(uz, vz, uy, vy, ux, vx)  # [Z, Y, X] -> [Uz, vz, Uy, vy, Ux, vx]
    return m.any(axis=(1, 3, 5)).reshape(-1)
