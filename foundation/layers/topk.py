"""Top-k sparse ReLU: keep the k largest activations of relu(h) per token, zero the rest.

Paper: "The Lazy Neuron Phenomenon: On Emergence of Activation Sparsity in Transformers" (Li et al., 2022),
https://arxiv.org/abs/2210.06313, which enforces sparsity in the MLP hidden layer with a top-k threshold.

    y = relu(h) * 1[relu(h)_i is among the k largest of relu(h) along the feature axis]

Exactly k entries per token are kept (ties broken by ``torch.topk``); fewer than k are nonzero only when the token
has fewer than k positive entries.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers._shape import feature_axis
from foundation.layers.compiled_core import CompiledCore

__all__ = ["TopKReLU"]


class _TopKReLUFn(torch.autograd.Function):
    """``relu(h)`` kept at its k largest entries along ``axis``, saving only the output ``y``.

    The gradient is ``dL/dy * 1[y > 0]``: an entry has one exactly when it was kept and ``h > 0`` (ReLU's gradient
    at 0 is 0), which is what autograd through ``topk`` and ``scatter`` gave, in one elementwise pass instead of a
    gather and a scatter. ``topk`` runs unsorted (the kept set is the same; 0.8x of a sorted ``topk``).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor, k: int, axis: int) -> torch.Tensor:
        r = torch.relu(h)
        values, index = r.topk(k, dim=axis, sorted=False)
        y = torch.zeros_like(r).scatter_(axis, index, values)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (y,) = ctx.saved_tensors
        return grad * y.sign(), None, None  # y >= 0, so sign(y) = 1[y > 0] (a float: no boolean saved, see HardASH)


def _topk_relu(h: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    return _TopKReLUFn.apply(h, k, axis)


# static shapes (a new shape compiles again): the dynamic-size kernels around torch's top-k made the fused layer
# slower than the plain one (21 against 12 ms at [16, 128, 512], one thread); the top-k itself is not fused either way
_CORE = CompiledCore(_topk_relu, dynamic=False)


class TopKReLU(nn.Module):
    """Keep the k largest of ``relu(h)`` along the feature axis, zero the rest.

    Args:
        k: how many to keep: an int >= 1 (a count), or a float in (0, 1) (a fraction of the feature axis, rounded
            up: ``ceil(k * C)``).
        dim: the feature axis: -1 for tokens [B, N, C], 1 for feature maps [B, C, ...].
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.

    Raises:
        ConfigError: ``k`` is a float outside (0, 1), an int below 1, or neither.
    """

    def __init__(self, k: int | float = 0.1, dim: int = -1, fused: bool = False) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ConfigError(f"TopKReLU: k must be an int count >= 1 or a float fraction in (0, 1), received {k!r}")
        if isinstance(k, float) and not 0.0 < k < 1.0:
            raise ConfigError(
                f"TopKReLU: fraction k={k} is outside (0, 1); pass a fraction such as 0.1, or an int count such as 64"
            )
        if isinstance(k, int) and k < 1:
            raise ConfigError(f"TopKReLU: count k={k} must be >= 1")
        self.k = k
        self.dim = dim
        self.fused = fused

    def num_kept(self, num_features: int) -> int:
        """How many features are kept out of ``num_features``."""
        return math.ceil(self.k * num_features) if isinstance(self.k, float) else self.k

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the top-k ReLU.

        Args:
            h: input [..., C] (or [B, C, ...] with ``dim=1``).

        Returns:
            Same shape; per token at most k nonzeros, all non-negative.

        Raises:
            DataError: a count ``k`` larger than the feature axis.
        """
        axis = feature_axis(h, self.dim, None, "TopKReLU")
        C = h.shape[axis]
        k = self.num_kept(C)
        if k > C:
            raise DataError(f"TopKReLU: k={k} exceeds the {C} features on axis {self.dim} (input {tuple(h.shape)})")
        return (_CORE if self.fused else _CORE.fn)(h, k, axis)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, fused={self.fused}"
