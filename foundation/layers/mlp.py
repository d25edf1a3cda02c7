"""MLP variants of the transformer block: the plain two-layer MLP and a two-layer KAN.

* :class:`Mlp` follows ``timm.layers.Mlp`` (Dosovitskiy et al., "An Image is
  Worth 16x16 Words", https://arxiv.org/abs/2010.11929): fc1 -> act -> drop ->
  norm -> fc2 -> drop, with timm's parameter names (``fc1``, ``fc2``) so that
  timm weights load and LoRA targets them by name. ``linear_layer`` swaps the
  ``nn.Linear`` class (e.g. :class:`~foundation.layers.noble.NobleLinear`).
* :class:`KANMlp` stacks two KAN-family layers (KAN, S-KAN or AF-KAN;
  Liu et al., https://arxiv.org/abs/2404.19756): a KAN layer carries its own
  nonlinearity, so there is no activation between them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from foundation.layers.create_act import make_activation

__all__ = ["KANMlp", "Mlp"]


class Mlp(nn.Module):
    """Two-layer MLP with timm's signature.

    Args:
        in_features: D_in.
        hidden_features: hidden width (default D_in).
        out_features: D_out (default D_in).
        act_layer: activation, a registered name (e.g. "gelu"), a class or None (identity).
        norm_layer: normalisation class applied to the hidden features, or None.
        bias: bias of both linear layers.
        drop: dropout after the activation and after fc2.
        linear_layer: class (or factory) of the two linear layers, called as
            ``linear_layer(in, out, bias=..., device=..., dtype=...)``.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: str | type[nn.Module] | None = "gelu",
        norm_layer: type[nn.Module] | None = None,
        bias: bool = True,
        drop: float = 0.0,
        linear_layer: Callable[..., nn.Linear] = nn.Linear,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        self.fc1 = linear_layer(in_features, hidden_features, bias=bias, **kw)
        self.act = make_activation(act_layer, num_features=hidden_features, where="Mlp act_layer")
        self.drop1 = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.norm = norm_layer(hidden_features, **kw) if norm_layer is not None else nn.Identity()
        self.fc2 = linear_layer(hidden_features, out_features, bias=bias, **kw)
        self.drop2 = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D_in] -> [..., D_out]."""
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))


class KANMlp(nn.Module):
    """Two KAN-family layers D_in -> hidden -> D_out, the KAN counterpart of :class:`Mlp`.

    Args:
        in_features: D_in.
        hidden_features: hidden width (default D_in).
        out_features: D_out (default D_in).
        layer: the layer class (KANLinear, SKANLinear, AFKANLinear), called as
            ``layer(in, out, device=..., dtype=..., **layer_kwargs)``.
        drop: dropout after each layer.
        device: parameter device.
        dtype: parameter dtype.
        **layer_kwargs: passed to both layers (basis, grid_size, activation, ...).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        **layer_kwargs,
    ) -> None:
        super().__init__()
        if layer is None:
            from foundation.layers.kan import KANLinear

            layer = KANLinear
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        self.fc1 = layer(in_features, hidden_features, device=device, dtype=dtype, **layer_kwargs)
        self.drop1 = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.fc2 = layer(hidden_features, out_features, device=device, dtype=dtype, **layer_kwargs)
        self.drop2 = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D_in] -> [..., D_out]."""
        return self.drop2(self.fc2(self.drop1(self.fc1(x))))
