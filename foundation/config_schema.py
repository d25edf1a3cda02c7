"""Typed conversion between plain data (YAML / JSON) and config dataclasses.

Every config of the suite is a dataclass of plain data (str, numbers, bools,
tuples, None, nested dataclasses, dicts of plain data). :func:`dataclass_from_dict`
checks keys and types and raises :class:`~foundation.errors.ConfigError` naming
the key, the expected type and the value received; :func:`dataclass_to_dict`
goes the other way, so a config round-trips YAML and ``config.json``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from foundation.errors import ConfigError, did_you_mean

__all__ = ["dataclass_from_dict", "dataclass_to_dict"]

T = TypeVar("T")


def dataclass_to_dict(obj: Any) -> Any:
    """Turn a config dataclass (or plain value) into JSON/YAML-ready plain data.

    Tuples become lists; nested dataclasses become dicts.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dataclass_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [dataclass_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): dataclass_to_dict(v) for k, v in obj.items()}
    return obj


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build ``cls`` from ``data``, checking every key and type.

    Args:
        cls: a dataclass type whose fields all have defaults or appear in ``data``.
        data: plain mapping (from YAML or JSON); None means "all defaults".
        where: prefix for messages, e.g. ``"recipe tiny.yaml, key train"``; field
            names are appended with dots.

    Returns:
        An instance of ``cls``; lists are turned into tuples where the field is a tuple.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a wrong type
            (with the expected type), a missing required key, or a failed
            ``__post_init__`` check.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key; {did_you_mean(str(key), fields)}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}; add them to the recipe")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: unknown value {value!r}; {did_you_mean(str(value), [str(a) for a in args])}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, where)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_type_name(tp)}), got {type(value).__name__} {value!r}")
        if args and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {len(value)}: {value!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if args else Any
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool (true/false), got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config field type {tp!r}")  # a programming error in a config class
