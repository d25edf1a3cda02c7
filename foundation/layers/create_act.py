"""Activation factory: a registered name, a class or None -> an activation layer.

Follows timm's ``get_act_layer`` / ``create_act_layer`` split (timm/layers/create_act.py): ``get_act_layer`` turns a
name into a class (a class passes through, None stays None) and ``make_activation`` builds the instance
(None -> ``nn.Identity``). Every activation of the layer library is registered in
:data:`foundation.registry.ACTIVATIONS` under a lower-case, hyphen-joined name.

The feature count. Some activations carry per-feature state (Dice, ProAct per neuron, EvoNorm) and need the width
of their feature axis. Callers such as ``make_mlp`` pass it as ``num_features=`` to :func:`make_activation`; the
factory hands it to the class only when the class's constructor has a ``num_features`` parameter, so one call site
can build any activation. Every other keyword goes to the constructor as is, and a keyword the constructor does not
take raises :class:`~foundation.errors.ConfigError` (nothing is dropped).
"""
from __future__ import annotations

import inspect

from torch import nn

from foundation.errors import ConfigError
from foundation.registry import ACTIVATIONS

__all__ = ["get_act_layer", "make_activation"]

ActLayer = str | type[nn.Module] | None

# torch built-ins, registered under the suite's lower-case hyphen-joined names.
_BUILTINS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky-relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "celu": nn.CELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "hard-sigmoid": nn.Hardsigmoid,
    "hard-swish": nn.Hardswish,
    "prelu": nn.PReLU,
}


def _register_all() -> None:
    """Fill ACTIVATIONS once, at import of this module (the registry is write-once)."""
    from foundation.layers.ash import ASH, HardASH
    from foundation.layers.crrelu import CRReLU
    from foundation.layers.dice import Dice
    from foundation.layers.evo_norm import EvoNormB0, EvoNormS0
    from foundation.layers.proact import ProAct
    from foundation.layers.selu import SELU
    from foundation.layers.topk import TopKReLU

    ours: dict[str, type[nn.Module]] = {
        "crrelu": CRReLU,
        "ash": ASH,
        "ash-hard": HardASH,
        "selu": SELU,
        "dice": Dice,
        "proact": ProAct,
        "topk-relu": TopKReLU,
        "evonorm-b0": EvoNormB0,
        "evonorm-s0": EvoNormS0,
    }
    for name, cls in {**_BUILTINS, **ours}.items():
        if name not in ACTIVATIONS:
            ACTIVATIONS.register(name, cls)


def get_act_layer(act: ActLayer, where: str | None = None) -> type[nn.Module] | None:
    """Resolve an activation to its class.

    Args:
        act: a registered name (e.g. ``"gelu"``, ``"crrelu"``), an ``nn.Module`` subclass (returned as is) or None.
        where: where the name came from (e.g. ``"recipe tiny.yaml, key model.activation"``), for error messages.

    Returns:
        The activation class, or None when ``act`` is None.

    Raises:
        ConfigError: ``act`` is an unknown name (the message gives the closest valid name and lists all), or is
            neither a string, an ``nn.Module`` subclass nor None.
    """
    if act is None:
        return None
    if isinstance(act, str):
        return ACTIVATIONS.get(act, where=where)
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act
    loc = f"{where}: " if where else ""
    raise ConfigError(
        f"{loc}activation must be a registered name, an nn.Module subclass or None; received {act!r} "
        f"of type {type(act).__name__}. Pass e.g. 'gelu' or torch.nn.GELU (the class, not an instance)"
    )


def make_activation(act: ActLayer, *, num_features: int | None = None, where: str | None = None, **kw) -> nn.Module:
    """Build an activation layer.

    Args:
        act: a registered name, an ``nn.Module`` subclass, or None for ``nn.Identity``.
        num_features: width of the feature axis. Passed on only to classes whose constructor takes
            ``num_features`` (Dice, ProAct, EvoNorm); required by those that cannot work without it.
        where: where ``act`` came from, for error messages.
        **kw: constructor arguments of the activation (e.g. ``k=0.1`` for ASH, ``dim=1`` for a channel axis).

    Returns:
        The activation module (``nn.Identity`` when ``act`` is None and no keywords are given).

    Raises:
        ConfigError: unknown name, or a keyword the activation's constructor does not take.
    """
    cls = get_act_layer(act, where=where)
    loc = f"{where}: " if where else ""
    if cls is None:
        if kw:
            raise ConfigError(f"{loc}activation is None (identity) but keywords {sorted(kw)} were given; drop them")
        return nn.Identity()
    params = inspect.signature(cls.__init__).parameters
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    if not takes_var_kw:
        unknown = sorted(set(kw) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{loc}activation {cls.__name__} does not take {unknown}; it accepts: {', '.join(accepted) or '(none)'}"
            )
    if "num_features" in params:
        kw["num_features"] = num_features
    return cls(**kw)


_register_all()
