"""AF-KAN: a KAN layer whose basis is built from pairs of activation functions.

Ta et al., "AF-KAN: Activation Function-Based Kolmogorov-Arnold Networks for
Efficient Representation Learning", https://arxiv.org/abs/2503.06112; it
generalises ReLU-KAN (Qiu et al., https://arxiv.org/abs/2406.02075).

Our reading of the paper (choices we could not verify are marked):

1. ReLU-KAN's basis on G + k intervals, b_j(x) = (r * relu(x - l_j) * relu(h_j - x))^2
   with l_j = lo + (j - k) * w, h_j = l_j + (k + 1) * w, w = (hi - lo) / G and
   r = 4 / ((k + 1) w)^2 (so each bump peaks at 1), with f = relu replaced by any
   f in {relu, silu, gelu, selu, elu, softplus, ...}; l and h are learnable per
   input feature and basis function.
2. Function combinations: with several functions f_1..f_F the basis is their
   ``"sum"`` or ``"product"`` (elementwise over the basis axis) (unverified:
   the paper lists more combination types; we implement these two).
3. Attention over the basis axis: for input feature i with basis vector
   b_i [M], a_i = softmax(b_i A) with A [M, M] learnable and zero-initialised,
   and b_i <- M * a_i * b_i, so at init the attention is the identity
   (unverified: the exact attention form and its init).
4. LayerNorm over the flattened basis [D_in * M] -> f -> Linear(D_in * M, D_out)
   (unverified: the paper's normalisation placement; we follow the issue text).

Inputs go through :class:`~foundation.layers.kan.KANInputNorm` first so that they
stay on the grid. The spline part is one ``nn.Linear`` over the flattened basis.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundation.errors import ConfigError, did_you_mean
from foundation.layers.create_act import make_activation
from foundation.layers.kan import KANInputNorm
from foundation.layers.kan_basis import check_grid

__all__ = ["AF_FUNCTIONS", "AFKANLinear"]

AF_FUNCTIONS = {
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "selu": F.selu,
    "elu": F.elu,
    "softplus": F.softplus,
    "leaky-relu": F.leaky_relu,
    "mish": F.mish,
}
COMBINATIONS = ("product", "sum")


class AFKANLinear(nn.Module):
    """AF-KAN layer: activation-pair basis, attention over the basis, LayerNorm -> f -> linear.

    Args:
        in_features: D_in.
        out_features: D_out.
        functions: names of f (keys of :data:`AF_FUNCTIONS`); several are combined.
        combination: "sum" or "product" of the per-function bases.
        grid_size: G grid intervals (>= 1); the basis has M = G + k functions.
        spline_order: k, the bump width in intervals minus 1 (>= 1).
        grid_range: (lo, hi).
        input_norm: "tanh", "minmax" or "none".
        act_layer: activation (name or class) after the LayerNorm (unverified default: SiLU).
        attention: use the attention over the basis axis.
        bias: bias of the output linear.
        device: parameter device.
        dtype: parameter dtype.

    Raises:
        ConfigError: unknown function or combination, or a bad grid.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        functions: tuple[str, ...] = ("silu",),
        combination: str = "sum",
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        input_norm: str = "tanh",
        act_layer: str | type[nn.Module] | None = "silu",
        attention: bool = True,
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        functions = (functions,) if isinstance(functions, str) else tuple(functions)
        if not functions:
            raise ConfigError("AFKANLinear: functions must name at least one function, e.g. ('silu',)")
        for f in functions:
            if f not in AF_FUNCTIONS:
                raise ConfigError(
                    f"AFKANLinear: unknown function {f!r} in functions; {did_you_mean(str(f), AF_FUNCTIONS)}"
                )
        if combination not in COMBINATIONS:
            raise ConfigError(
                f"AFKANLinear: unknown combination {combination!r}; {did_you_mean(str(combination), COMBINATIONS)}"
            )
        check_grid(grid_size, spline_order, grid_range, where="AFKANLinear")
        self.in_features, self.out_features = in_features, out_features
        self.functions, self.combination = functions, combination
        self.grid_size, self.spline_order = grid_size, spline_order
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.num_basis = grid_size + spline_order
        kw = {"device": device, "dtype": dtype}
        self.norm = KANInputNorm(in_features, input_norm, self.grid_range, **kw)
        self.low = nn.Parameter(torch.empty(in_features, self.num_basis, **kw))
        self.high = nn.Parameter(torch.empty(in_features, self.num_basis, **kw))
        self.attn = nn.Parameter(torch.empty(self.num_basis, self.num_basis, **kw)) if attention else None
        self.layer_norm = nn.LayerNorm(in_features * self.num_basis, **kw)
        self.act = make_activation(act_layer, num_features=in_features * self.num_basis, where="AFKANLinear act_layer")
        self.linear = nn.Linear(in_features * self.num_basis, out_features, bias=bias, **kw)
        self.reset_parameters()

    @property
    def _width(self) -> float:
        return (self.grid_range[1] - self.grid_range[0]) / self.grid_size

    def reset_parameters(self) -> None:
        """ReLU-KAN grid for l and h, zero attention (identity), LayerNorm and Linear defaults."""
        w, k = self._width, self.spline_order
        low = self.grid_range[0] + (torch.arange(self.num_basis, dtype=torch.float64) - k) * w
        with torch.no_grad():
            self.low.copy_(low.expand(self.in_features, -1))
            self.high.copy_((low + (k + 1) * w).expand(self.in_features, -1))
        if self.attn is not None:
            nn.init.zeros_(self.attn)
        self.layer_norm.reset_parameters()
        self.linear.reset_parameters()

    def compute_basis(self, x: torch.Tensor) -> torch.Tensor:
        """Activation-pair basis with attention: x [B, D_in] -> [B, D_in, M]."""
        z = self.norm(x).unsqueeze(-1)  # [B, D_in] -> [B, D_in, 1]
        r = 4.0 / ((self.spline_order + 1) * self._width) ** 2  # peak of relu bumps is 1
        parts = [(r * AF_FUNCTIONS[f](z - self.low) * AF_FUNCTIONS[f](self.high - z)) ** 2 for f in self.functions]
        basis = parts[0]
        for p in parts[1:]:
            basis = basis + p if self.combination == "sum" else basis * p  # [B, D_in, M]
        if self.attn is not None:
            weights = torch.softmax(basis @ self.attn, dim=-1)  # [B, D_in, M] @ [M, M] -> [B, D_in, M]
            basis = basis * weights * self.num_basis
        return basis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer: x [..., D_in] -> [..., D_out]."""
        *lead, d = x.shape
        x = x.reshape(-1, d)  # [..., D_in] -> [B, D_in]
        feats = self.compute_basis(x).flatten(1)  # [B, D_in, M] -> [B, D_in * M]
        y = self.linear(self.act(self.layer_norm(feats)))  # [B, D_out]
        return y.reshape(*lead, self.out_features)  # [B, D_out] -> [..., D_out]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, functions={self.functions}, "
            f"combination={self.combination!r}, grid_size={self.grid_size}, spline_order={self.spline_order}"
        )
