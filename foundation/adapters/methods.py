"""The table of adapter methods: name -> (config class, model class).

Written once, by one explicit call per method in :mod:`foundation.adapters`
(peft's ``register_peft_method`` is the model). A duplicate name refuses; a
look-up of an unknown name raises :class:`~foundation.errors.ConfigError`
naming the closest valid method.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


from foundation.errors import ConfigError, did_you_mean

__all__ = ["AdapterMethod", "register_adapter_method", "get_adapter_method", "adapter_method_names"]

_NAME = re.compile(r"^[a-z][a-z0-9\-]*$")


@dataclass(frozen=True)
class AdapterMethod:
    """One registered adapter method.

    Args:
        name: lower-case, hyphen-joined method name ("lora", "dopamine").
        config_cls: the dataclass that configures it.
        model_cls: the class that injects it into a model and saves/loads it.
        peft_type: the value written to ``adapter_config.json["peft_type"]``.
    """

    name: str
    config_cls: type
    model_cls: type
    peft_type: str


_METHODS: dict[str, AdapterMethod] = {}


def register_adapter_method(name: str, config_cls: type, model_cls: type, peft_type: str) -> AdapterMethod:
    """Register an adapter method once.

    Raises:
        ValueError: ``name`` is malformed, or the name or its ``peft_type`` is already taken
            (a programming error, not a user error).
    """
    if not _NAME.match(name):
        raise ValueError(f"adapter method name {name!r} must be lower-case and hyphen-joined, e.g. 'lora'")
    if name in _METHODS:
        raise ValueError(f"adapter method {name!r} is already registered to {_METHODS[name]!r}")
    taken = {m.peft_type: m.name for m in _METHODS.values()}
    if peft_type in taken:
        raise ValueError(f"peft_type {peft_type!r} is already used by adapter method {taken[peft_type]!r}")
    method = AdapterMethod(name, config_cls, model_cls, peft_type)
    _METHODS[name] = method
    return method


def get_adapter_method(name: str, where: str | None = None) -> AdapterMethod:
    """Return the method registered as ``name`` (or whose ``peft_type`` is ``name``).

    Args:
        name: a method name ("dopamine") or a peft_type ("DOPAMINE", read from adapter_config.json).
        where: where the name came from, for the message.

    Raises:
        ConfigError: no such method.
    """
    if name in _METHODS:
        return _METHODS[name]
    for method in _METHODS.values():
        if method.peft_type == name:
            return method
    loc = f"{where}: " if where else ""
    raise ConfigError(f"{loc}unknown adapter method {name!r}; {did_you_mean(str(name), _METHODS)}")


def adapter_method_names() -> list[str]:
    """All registered method names, sorted."""
    return sorted(_METHODS)


