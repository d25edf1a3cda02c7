"""S-KAN: each output node mixes several activation spaces and can be pruned to one.

Selectable KAN ("S-KAN"), arXiv 2025 (citation unverified): every node o mixes
S activation spaces (B-spline, RBF, Chebyshev, Fourier, wavelet, ...) with
learned selection weights p[o] = softmax(alpha[o]) over the spaces, and after
training keeps only its selected space (argmax p[o]).

Our fast form. With B_s(x) [B, D_in, M_s] the basis of space s and c_s its
coefficients, node o computes

    y_o = base(act(x))_o + sum_s p[o, s] * <c_s[o], flatten(B_s(x))>
        = base(act(x))_o + <concat_s(p[o, s] * c_s[o]), flatten(concat_s B_s(x))>

so the selection weights fold into the coefficients and the whole spline part
is ONE matrix multiply over the concatenated basis [B, D_in * sum_s M_s].
:meth:`SKANLinear.prune` returns a :class:`PrunedSKANLinear` in which node o
keeps exactly the term p[o, s*] <c_s*[o], B_s*(x)> of its selected space s*
(unchanged) and drops the others; only selected spaces are evaluated.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from foundation.errors import ConfigError, did_you_mean
from foundation.layers.create_act import make_activation
from foundation.layers.kan import KANInputNorm
from foundation.layers.kan_basis import BASES, basis_size, check_grid, make_basis

__all__ = ["PrunedSKANLinear", "SKANLinear"]


class SKANLinear(nn.Module):
    """KAN layer whose nodes select among several basis spaces.

    Args:
        in_features: D_in.
        out_features: D_out.
        spaces: names of the activation spaces (see :data:`foundation.layers.kan_basis.BASES`),
            default ("bspline", "rbf", "chebyshev", "fourier") (unverified choice).
        grid_size: grid size shared by every space (>= 1).
        spline_order: B-spline degree (>= 1).
        grid_range: (lo, hi) shared by every space.
        input_norm: "tanh", "minmax" or "none" (see :class:`~foundation.layers.kan.KANInputNorm`).
        base_act_layer: activation (name or class) of the base term; None for a linear base term.
        bias: learnable bias.
        spline_init_scale: std of the coefficients times sqrt(D_in) (unverified, 0.1).
        device: parameter device.
        dtype: parameter dtype.

    Raises:
        ConfigError: an unknown or repeated space, no space, or a bad grid.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spaces: tuple[str, ...] = ("bspline", "rbf", "chebyshev", "fourier"),
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        input_norm: str = "tanh",
        base_act_layer: str | type[nn.Module] | None = "silu",
        bias: bool = True,
        spline_init_scale: float = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        spaces = tuple(spaces)
        if not spaces or len(set(spaces)) != len(spaces):
            raise ConfigError(f"SKANLinear: spaces must be non-empty and distinct, got {spaces!r}")
        for s in spaces:
            if s not in BASES:
                raise ConfigError(f"SKANLinear: unknown space {s!r} in spaces; {did_you_mean(str(s), BASES)}")
        check_grid(grid_size, spline_order, grid_range, where="SKANLinear")
        self.in_features, self.out_features = in_features, out_features
        self.spaces, self.grid_size, self.spline_order = spaces, grid_size, spline_order
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.sizes = tuple(basis_size(s, grid_size, spline_order) for s in spaces)
        self.spline_init_scale = spline_init_scale
        kw = {"device": device, "dtype": dtype}
        self.norm = KANInputNorm(in_features, input_norm, self.grid_range, **kw)
        self.act = make_activation(base_act_layer, num_features=in_features, where="SKANLinear base_act_layer")
        self.base = nn.Linear(in_features, out_features, bias=bias, **kw)
        self.coef = nn.Parameter(torch.empty(out_features, in_features, sum(self.sizes), **kw))
        self.selection = nn.Parameter(torch.empty(out_features, len(spaces), **kw))
        self.register_buffer("_space_of_column", torch.repeat_interleave(
            torch.arange(len(spaces), device=device), torch.tensor(self.sizes, device=device)), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Base as nn.Linear; coefficients N(0, (scale / sqrt(D_in))^2); uniform selection (logits 0)."""
        self.base.reset_parameters()
        nn.init.normal_(self.coef, std=self.spline_init_scale / math.sqrt(self.in_features))
        nn.init.zeros_(self.selection)

    def selection_weights(self) -> torch.Tensor:
        """p = softmax over spaces per node, [D_out, S]."""
        return torch.softmax(self.selection, dim=-1)

    def compute_basis(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated basis of every space: x [B, D_in] -> [B, D_in, sum_s M_s]."""
        z = self.norm(x)
        bases = [make_basis(s, z, self.grid_size, self.spline_order, self.grid_range) for s in self.spaces]
        return torch.cat(bases, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer: x [..., D_in] -> [..., D_out]."""
        *lead, d = x.shape
        x = x.reshape(-1, d)  # [..., D_in] -> [B, D_in]
        feats = self.compute_basis(x).flatten(1)  # [B, D_in, sum M] -> [B, D_in * sum M]
        p = self.selection_weights()[:, self._space_of_column]  # [D_out, S] -> [D_out, sum M]
        weight = (self.coef * p.unsqueeze(1)).flatten(1)  # [D_out, D_in, sum M] -> [D_out, D_in * sum M]
        y = self.base(self.act(x)) + feats @ weight.t()  # [B, D_out]
        return y.reshape(*lead, self.out_features)  # [B, D_out] -> [..., D_out]

    @torch.no_grad()
    def prune(self) -> "PrunedSKANLinear":
        """A layer keeping only each node's selected (argmax) space.

        Node o keeps p[o, s*] * <c_s*[o], B_s*(x)> exactly (the selection weight is
        folded into the kept coefficients) plus the base term; the terms of the
        other spaces are dropped. The new layer shares nothing with this one.
        """
        p = self.selection_weights()
        chosen = p.argmax(-1)  # [D_out]
        offsets = [0]
        for m in self.sizes:
            offsets.append(offsets[-1] + m)
        kept_spaces, nodes, weights = [], [], []
        for s, name in enumerate(self.spaces):
            idx = torch.nonzero(chosen == s).flatten()
            if idx.numel() == 0:
                continue
            c = self.coef[idx, :, offsets[s] : offsets[s + 1]] * p[idx, s].view(-1, 1, 1)  # [n_s, D_in, M_s]
            kept_spaces.append(name)
            nodes.append(idx)
            weights.append(c.flatten(1))  # [n_s, D_in, M_s] -> [n_s, D_in * M_s]
        return PrunedSKANLinear(self, tuple(kept_spaces), nodes, weights)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, spaces={self.spaces}, "
            f"grid_size={self.grid_size}"
        )


class PrunedSKANLinear(nn.Module):
    """S-KAN after pruning: node o uses only its selected space. Built by :meth:`SKANLinear.prune`.

    Each kept space s holds an ``nn.Linear`` ``splines[s]`` over its own basis for
    the nodes that selected it; outputs are put back in node order.
    """

    def __init__(
        self, src: SKANLinear, spaces: tuple[str, ...], nodes: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = src.in_features, src.out_features
        self.grid_size, self.spline_order, self.grid_range = src.grid_size, src.spline_order, src.grid_range
        self.spaces = spaces
        self.norm = copy.deepcopy(src.norm)
        self.act = copy.deepcopy(src.act)
        self.base = copy.deepcopy(src.base)
        w = src.coef
        self.splines = nn.ModuleDict()
        for name, wt in zip(spaces, weights):
            lin = nn.Linear(wt.shape[1], wt.shape[0], bias=False, device=w.device, dtype=w.dtype)
            lin.weight.data.copy_(wt)
            self.splines[name] = lin
        order = torch.cat(nodes)  # concatenated output column c holds node order[c]
        self.register_buffer("inverse", torch.argsort(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the pruned layer: x [..., D_in] -> [..., D_out]."""
        *lead, d = x.shape
        x = x.reshape(-1, d)  # [..., D_in] -> [B, D_in]
        z = self.norm(x)
        parts = [
            self.splines[s](make_basis(s, z, self.grid_size, self.spline_order, self.grid_range).flatten(1))
            for s in self.spaces
        ]  # each [B, D_in, M_s] -> [B, D_in * M_s] -> [B, n_s]
        y = self.base(self.act(x)) + torch.cat(parts, -1)[:, self.inverse]  # [B, D_out]
        return y.reshape(*lead, self.out_features)  # [B, D_out] -> [..., D_out]
