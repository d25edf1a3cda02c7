"""Name -> builder registries, one per kind.

The suite's only global state: write-once tables filled at import time. A
duplicate name raises; nothing is swapped at run time. Look-ups of an unknown
name raise :class:`~foundation.errors.ConfigError` with the closest valid name.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from foundation.errors import ConfigError, did_you_mean

__all__ = ["Registry", "MODELS", "DATASETS", "OBJECTIVES", "MLPS", "ACTIVATIONS"]

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


class Registry:
    """A write-once mapping from lower-case, hyphen-joined names to builders.

    Args:
        kind: what the registry holds ("model", "activation", ...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Raises:
            ValueError: the name is malformed or already taken (a programming error).
        """
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case and hyphen-joined, e.g. 'slim-brain'")

        def _add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = item
            return item

        return _add if obj is None else _add(obj)

    def get(self, name: str, where: str | None = None) -> Any:
        """Return the builder registered as ``name``.

        Args:
            name: the registered name.
            where: where the name came from (e.g. "recipe tiny.yaml, key model.name"), for the message.

        Raises:
            ConfigError: no such name; the message gives the closest valid one.
        """
        try:
            return self._items[name]
        except KeyError:
            loc = f"{where}: " if where else ""
            raise ConfigError(f"{loc}unknown {self.kind} {name!r}; {did_you_mean(str(name), self._items)}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS = Registry("model")
DATASETS = Registry("dataset")
OBJECTIVES = Registry("objective")
MLPS = Registry("mlp")
ACTIVATIONS = Registry("activation")
