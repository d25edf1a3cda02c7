"""The table of adapter methods: name -> :class:`~foundation.adapters.base.AdapterModel` subclass.

Written once, by one explicit call per method (peft's ``register_peft_method`` is the model): the suite's own
methods register in :mod:`foundation.adapters`, a user's method by calling :func:`register_adapter` on its
class. A duplicate name or ``peft_type`` refuses; a look-up of an unknown name raises
:class:`~foundation.errors.ConfigError` naming the closest valid method.
"""
from __future__ import annotations

import re

from foundation.errors import ConfigError, did_you_mean

__all__ = ["register_adapter", "get_adapter", "adapter_names"]

_NAME = re.compile(r"^[a-z][a-z0-9\-]*$")
_METHODS: dict[str, type] = {}


def register_adapter(cls: type) -> type:
    """Register an :class:`AdapterModel` subclass under its ``method`` name once; usable as a class decorator.

    Raises:
        ValueError: the class is no ``AdapterModel``, lacks ``method``/``peft_type``/``marker``, the name is
            malformed, or the name or its ``peft_type`` is already taken (a programming error, not a user error).
    """
    from foundation.adapters.base import AdapterModel

    if not (isinstance(cls, type) and issubclass(cls, AdapterModel)):
        raise ValueError(f"register_adapter: {cls!r} is not a subclass of AdapterModel")
    name, peft_type = cls.method, cls.peft_type
    if not (name and peft_type and cls.marker):
        raise ValueError(f"register_adapter: {cls.__name__} must set the class attributes method, peft_type and marker")
    if not _NAME.match(name):
        raise ValueError(f"adapter method name {name!r} must be lower-case and hyphen-joined, e.g. 'lora'")
    if name in _METHODS:
        raise ValueError(f"adapter method {name!r} is already registered to {_METHODS[name].__qualname__}")
    taken = {m.peft_type: m.method for m in _METHODS.values()}
    if peft_type in taken:
        raise ValueError(f"peft_type {peft_type!r} is already used by adapter method {taken[peft_type]!r}")
    _METHODS[name] = cls
    return cls


def get_adapter(name: str, where: str | None = None) -> type:
    """Return the adapter class registered as ``name`` (or whose ``peft_type`` is ``name``).

    Args:
        name: a method name ("dopamine") or a peft_type ("DOPAMINE", read from adapter_config.json).
        where: where the name came from, for the message.

    Raises:
        ConfigError: no such method.
    """
    if name in _METHODS:
        return _METHODS[name]
    for cls in _METHODS.values():
        if cls.peft_type == name:
            return cls
    loc = f"{where}: " if where else ""
    raise ConfigError(f"{loc}unknown adapter method {name!r}; {did_you_mean(str(name), _METHODS)}")


def adapter_names() -> list[str]:
    """All registered method names, sorted."""
    return sorted(_METHODS)
