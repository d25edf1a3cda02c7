"""CRReLU: Correction Regularized ReLU.

Paper: "A Method on Searching Better Activation Functions" (Sun, Wu et al., 2024), https://arxiv.org/abs/2405.12954.
The entropy-based activation function optimisation (EAFO) of the paper derives a correction of ReLU:

    CRReLU(x) = relu(x) + eps * x * exp(-x^2 / 2)

with one learnable scalar ``eps`` per layer, initialised to 0.01. The gradient is written out by hand so that only
``x`` is saved for backward (as for GELU), instead of the four intermediates plain autograd would keep:

    dy/dx = 1[x > 0] + eps * exp(-x^2 / 2) * (1 - x^2),    dy/deps = x * exp(-x^2 / 2)
"""
from __future__ import annotations

import torch
from torch import nn

from foundation.layers.compiled_core import CompiledCore

__all__ = ["CRReLU"]


class _CRReLUFn(torch.autograd.Function):
    """relu(x) + eps * x * exp(-x^2 / 2), saving only x and eps; backward uses differentiable ops (double backward)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, eps)
        return torch.relu(x) + eps * x * torch.exp(-0.5 * x * x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, eps = ctx.saved_tensors
        bump = torch.exp(-0.5 * x * x)
        grad_x = grad * ((x > 0).to(x.dtype) + eps * bump * (1 - x * x))
        grad_eps = (grad * x * bump).sum().reshape(eps.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_eps


def _crrelu(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return _CRReLUFn.apply(x, eps)


_CORE = CompiledCore(_crrelu)


class CRReLU(nn.Module):
    """Correction Regularized ReLU, elementwise: ``relu(x) + eps * x * exp(-x^2 / 2)``.

    Works on any shape [...]; there is no feature axis (``eps`` is one scalar).

    Args:
        eps_init: initial value of the learnable scalar ``eps`` (0.01 in the paper).
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.
        device: device of the parameter.
        dtype: dtype of the parameter.
    """

    def __init__(self, eps_init: float = 0.01, fused: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fused = fused
        self.eps_init = float(eps_init)
        self.eps = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set ``eps`` to ``eps_init``."""
        nn.init.constant_(self.eps, self.eps_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply CRReLU.

        Args:
            x: input [...].

        Returns:
            Output of the same shape [...].
        """
        return (_CORE if self.fused else _CORE.fn)(x, self.eps.to(x.dtype))

    def extra_repr(self) -> str:
        return f"eps_init={self.eps_init}, fused={self.fused}"
