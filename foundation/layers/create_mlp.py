"""MLP factory: ``make_mlp(kind, ...)`` builds the transformer MLP named in a recipe.

Kinds, registered in :data:`foundation.registry.MLPS` when this module is imported:

* ``mlp``: :class:`~foundation.layers.mlp.Mlp` (fc1 -> activation -> fc2).
* ``noble``: the same Mlp whose two linears are
  :class:`~foundation.layers.noble.NobleLinear` (keyword ``rank``).
* ``kan``, ``skan``, ``afkan``: :class:`~foundation.layers.mlp.KANMlp` with two
  KANLinear / SKANLinear / AFKANLinear layers. For these ``activation`` is the
  layer's own activation: the base term of KAN and S-KAN, the f after the
  LayerNorm of AF-KAN.

Every builder takes ``(in_features, hidden_features, out_features, activation,
*, <its keywords>)``; a keyword a kind does not take raises ConfigError listing
the ones it does (nothing is silently dropped).
"""
from __future__ import annotations

import functools
import inspect

import torch
import torch.nn as nn

from foundation.errors import ConfigError
from foundation.layers.afkan import AFKANLinear
from foundation.layers.create_act import get_act_layer
from foundation.layers.kan import KANLinear
from foundation.layers.mlp import KANMlp, Mlp
from foundation.layers.noble import NobleLinear
from foundation.layers.skan import SKANLinear
from foundation.registry import MLPS

__all__ = ["make_mlp"]

Act = str | type[nn.Module] | None
Range = tuple[float, float]


def _mlp(in_features: int, hidden_features: int, out_features: int, activation: Act, *, bias: bool = True,
         drop: float = 0.0, norm_layer: type[nn.Module] | None = None, device: torch.device | None = None,
         dtype: torch.dtype | None = None) -> Mlp:
    return Mlp(
        in_features, hidden_features, out_features, activation, norm_layer, bias, drop, device=device, dtype=dtype
    )


def _noble(in_features: int, hidden_features: int, out_features: int, activation: Act, *, rank: int = 32,
           bias: bool = True, drop: float = 0.0, norm_layer: type[nn.Module] | None = None,
           device: torch.device | None = None, dtype: torch.dtype | None = None) -> Mlp:
    return Mlp(in_features, hidden_features, out_features, activation, norm_layer, bias, drop,
               linear_layer=functools.partial(NobleLinear, rank=rank), device=device, dtype=dtype)


def _kan(in_features: int, hidden_features: int, out_features: int, activation: Act, *, basis: str = "bspline",
         grid_size: int = 5, spline_order: int = 3, grid_range: Range = (-1.0, 1.0), input_norm: str = "tanh",
         bias: bool = True, drop: float = 0.0, device: torch.device | None = None,
         dtype: torch.dtype | None = None) -> KANMlp:
    return KANMlp(in_features, hidden_features, out_features, KANLinear, drop, device, dtype, basis=basis,
                  grid_size=grid_size, spline_order=spline_order, grid_range=grid_range, input_norm=input_norm,
                  base_act_layer=activation, bias=bias)


def _skan(in_features: int, hidden_features: int, out_features: int, activation: Act, *,
          spaces: tuple[str, ...] = ("bspline", "rbf", "chebyshev", "fourier"), grid_size: int = 5,
          spline_order: int = 3, grid_range: Range = (-1.0, 1.0), input_norm: str = "tanh", bias: bool = True,
          drop: float = 0.0, device: torch.device | None = None, dtype: torch.dtype | None = None) -> KANMlp:
    return KANMlp(in_features, hidden_features, out_features, SKANLinear, drop, device, dtype, spaces=tuple(spaces),
                  grid_size=grid_size, spline_order=spline_order, grid_range=grid_range, input_norm=input_norm,
                  base_act_layer=activation, bias=bias)


def _afkan(in_features: int, hidden_features: int, out_features: int, activation: Act, *,
           functions: tuple[str, ...] = ("silu",), combination: str = "sum", grid_size: int = 5,
           spline_order: int = 3, grid_range: Range = (-1.0, 1.0), input_norm: str = "tanh", attention: bool = True,
           bias: bool = True, drop: float = 0.0, device: torch.device | None = None,
           dtype: torch.dtype | None = None) -> KANMlp:
    return KANMlp(in_features, hidden_features, out_features, AFKANLinear, drop, device, dtype, functions=functions,
                  combination=combination, grid_size=grid_size, spline_order=spline_order, grid_range=grid_range,
                  input_norm=input_norm, act_layer=activation, attention=attention, bias=bias)


_BUILDERS = {"mlp": _mlp, "noble": _noble, "kan": _kan, "skan": _skan, "afkan": _afkan}
for _name, _builder in _BUILDERS.items():
    if _name not in MLPS:
        MLPS.register(_name, _builder)


def make_mlp(
    kind: str,
    in_features: int,
    hidden_features: int,
    out_features: int | None = None,
    activation: Act = "gelu",
    where: str | None = None,
    **kw,
) -> nn.Module:
    """Build the MLP registered as ``kind``.

    Args:
        kind: a name in :data:`foundation.registry.MLPS` ("mlp", "kan", "skan", "afkan", "noble").
        in_features: D_in.
        hidden_features: hidden width.
        out_features: D_out (default D_in).
        activation: activation name, class or None (see the module docstring for KAN kinds).
        where: where ``kind`` came from (e.g. "recipe tiny.yaml, key model.mlp"), for messages.
        **kw: keywords of that kind (e.g. ``rank`` for noble, ``basis`` and ``grid_size`` for kan).

    Returns:
        The module, mapping [..., D_in] -> [..., D_out].

    Raises:
        ConfigError: unknown kind (with the closest name), unknown activation, a
            keyword the kind does not take, or a bad value of a keyword.
    """
    builder = MLPS.get(kind, where=where)
    loc = f"{where}: " if where else ""
    accepted = [n for n, p in inspect.signature(builder).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ConfigError(f"{loc}mlp kind {kind!r} does not take {unknown}; it accepts: {', '.join(accepted)}")
    get_act_layer(activation, where=where)  # unknown names fail here, naming where they came from
    return builder(in_features, hidden_features, out_features or in_features, activation, **kw)
