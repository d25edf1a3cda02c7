"""CRReLU: Correction Regularized ReLU.

Paper: "A Method on Searching Better Activation Functions" (Sun, Wu et al., 2024), https://arxiv.org/abs/2405.12954.
The entropy-based activation function optimisation (EAFO) of the paper derives a correction of ReLU:

    CRReLU(x) = relu(x) + eps * x * exp(-x^2 / 2)

with one learnable scalar ``eps`` per layer, initialised to 0.01.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CRReLU"]


class CRReLU(nn.Module):
    """Correction Regularized ReLU, elementwise: ``relu(x) + eps * x * exp(-x^2 / 2)``.

    Works on any shape [...]; there is no feature axis (``eps`` is one scalar).

    Args:
        eps_init: initial value of the learnable scalar ``eps`` (0.01 in the paper).
        device: device of the parameter.
        dtype: dtype of the parameter.
    """

    def __init__(self, eps_init: float = 0.01, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
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
        eps = self.eps.to(x.dtype)
        return torch.relu(x) + eps * x * torch.exp(-0.5 * x * x)

    def extra_repr(self) -> str:
        return f"eps_init={self.eps_init}"
