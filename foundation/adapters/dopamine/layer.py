"""The Dopamine layer: per-unit threshold tau and gain gamma on the outputs of one frozen layer.

The method and its equations are in :mod:`foundation.adapters.dopamine.config`.
Shaped like peft's IA3 layer: it keeps ``base_layer``, stores its parameters
in ``ParameterDict``s keyed by adapter name and lists their attribute names in
``adapter_layer_names`` so saving can filter by name.
"""
from __future__ import annotations

import torch
from torch import nn

from foundation.adapters.dopamine.config import DopamineConfig

__all__ = ["DopamineLayer"]


class DopamineLayer(nn.Module):
    """Gate the output units of ``base_layer``: h' = gamma * (1 - m + m * g) * h.

    g = sigmoid((h - tau) / T) in training, g = 1[h > tau] in eval mode (with ``hard_in_eval``); m is the
    warm-up mix (0 at step 0: exact identity). ``temperature`` and ``mix`` are set by
    :class:`~foundation.adapters.dopamine.model.DopamineModel` from the step.

    Units are the last dimension of a linear layer's output (``[B, ..., D]``) and the channel dimension of a
    convolution's (``[B, D, H, W]``).

    Args:
        base_layer: the layer whose outputs are gated: ``nn.Linear``, a peft LoRA ``Linear``,
            :class:`~foundation.adapters.dopamine.conditional.SkipInactiveLinear` (``out_features``) or an
            ``nn.Conv1d/2d/3d`` (``out_channels``).
        adapter_name: key of this adapter's parameters.
        config: the adapter config (initial values, hard gate in eval).
    """

    adapter_layer_names = ("dopamine_tau", "dopamine_gamma")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: DopamineConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.unit_dim = 1 if isinstance(base_layer, nn.modules.conv._ConvNd) else -1
        self.out_features = int(base_layer.out_channels if self.unit_dim == 1 else base_layer.out_features)
        self.dopamine_tau = nn.ParameterDict()
        self.dopamine_gamma = nn.ParameterDict()
        self.hard_in_eval: dict[str, bool] = {}
        self.active_adapter = adapter_name
        self.disabled = False
        self.temperature = config.temperature_start
        self.mix = 0.0 if config.warmup_steps > 0 else 1.0
        self.recorded: list[torch.Tensor] | None = None
        self.gate_mean: torch.Tensor | None = None
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: DopamineConfig) -> None:
        """Create (or re-initialise) the parameters of ``adapter_name``: tau = tau_init, gamma = gamma_init."""
        weight = next(self.base_layer.parameters(), None)
        kw = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
        self.dopamine_tau[adapter_name] = nn.Parameter(torch.full((self.out_features,), float(config.tau_init), **kw))
        self.dopamine_gamma[adapter_name] = nn.Parameter(
            torch.full((self.out_features,), float(config.gamma_init), **kw))
        self.hard_in_eval[adapter_name] = config.hard_in_eval

    @property
    def hard(self) -> bool:
        """Whether the current forward uses the hard gate (eval mode with ``hard_in_eval``)."""
        return (not self.training) and self.hard_in_eval[self.active_adapter]

    def _per_unit(self, value: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``value`` [D] shaped to broadcast over ``h`` along the unit dimension."""
        if self.unit_dim == -1:
            return value
        return value.reshape(-1, *([1] * (h.dim() - 2)))

    def unit_means(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (shaped like the layer's output) averaged over every dimension but the units -> ``[D]``."""
        return x.movedim(self.unit_dim, -1).reshape(-1, self.out_features).mean(0)

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """The gate g in [0, 1] for pre-gate units ``h`` (before gamma and the warm-up mix)."""
        tau = self._per_unit(self.dopamine_tau[self.active_adapter], h)
        if self.hard:
            return (h > tau).to(h.dtype)
        return torch.sigmoid((h - tau) / self.temperature)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Base layer, then the gate on its output units.

        Args:
            x: input of the base layer ([B, ..., D_in] or [B, C_in, ...]).

        Returns:
            the gated units, shaped as ``base_layer(x)``; equal to it when disabled or at step 0.
        """
        h = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return h
        gamma = self._per_unit(self.dopamine_gamma[self.active_adapter], h)
        g = self.gate(h)
        if self.recorded is not None:  # firing share of every unit over this forward's positions: [D]
            fired = (h > self._per_unit(self.dopamine_tau[self.active_adapter], h)).to(torch.float32)
            self.recorded.append(self.unit_means(fired).detach().cpu())
        if self.mix != 1.0:
            g = (1.0 - self.mix) + self.mix * g
        self.gate_mean = g.mean() if self.training else None  # for DopamineModel.gate_activity (sparsity loss)
        return gamma * g * h

    def extra_repr(self) -> str:
        return (f"out_features={self.out_features}, adapters={list(self.dopamine_tau)}, "
                f"temperature={self.temperature:.4g}, mix={self.mix:.3g}")
