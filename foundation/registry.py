"""Name -> builder registries, one per kind.

The suite's only global state: write-once tables. Built-in components are listed below as
``name -> "module:attr"`` and imported on first use, so importing this module (or ``config``) imports no model,
dataset or objective, and no import cycle can pass through the registry. A user's own component registers
with :meth:`Registry.register` (from a module a recipe lists under ``imports``). A duplicate name raises;
nothing is swapped at run time. Look-ups of an unknown name raise
:class:`~foundation.errors.ConfigError` with the closest valid name.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from foundation.errors import ConfigError, did_you_mean

__all__ = ["Registry", "MODELS", "DATASETS", "OBJECTIVES", "MLPS", "ACTIVATIONS"]

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


class Registry:
    """A write-once mapping from lower-case, hyphen-joined names to builders.

    Args:
        kind: what the registry holds ("model", "activation", ...), used in messages.
        builtin: ``name -> "package.module:attr"`` for the suite's own components, imported on first look-up.
        providers: modules that register their names when imported (a layer family's factory module); imported
            on the first look-up or listing.
    """

    def __init__(self, kind: str, builtin: Mapping[str, str] | None = None, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._builtin = dict(builtin or {})
        self._providers = providers
        self._providers_loaded = not providers
        for name, target in self._builtin.items():
            if not _NAME.match(name) or ":" not in target:
                raise ValueError(f"built-in {kind} {name!r} -> {target!r}: expected a hyphen-joined name and 'module:attr'")

    def _load_providers(self) -> None:
        if not self._providers_loaded:
            self._providers_loaded = True  # set first: the providers call register() while importing
            for module in self._providers:
                importlib.import_module(module)

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Raises:
            ValueError: the name is malformed or already taken, built-in names included (a programming error).
        """
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case and hyphen-joined, e.g. 'slim-brain'")

        def _add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            if name in self._builtin:
                raise ValueError(f"{self.kind} {name!r} is a built-in ({self._builtin[name]}); choose another name")
            self._items[name] = item
            return item

        return _add if obj is None else _add(obj)

    def get(self, name: str, where: str | None = None) -> Any:
        """Return the builder registered as ``name`` (importing a built-in's module on first use).

        Args:
            name: the registered name.
            where: where the name came from (e.g. "recipe tiny.yaml, key model.name"), for the message.

        Raises:
            ConfigError: no such name; the message gives the closest valid one.
        """
        if name in self._items:
            return self._items[name]
        if isinstance(name, str) and name in self._builtin:
            module, attr = self._builtin[name].split(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
            return self._items[name]
        self._load_providers()
        try:
            return self._items[name]
        except KeyError:
            loc = f"{where}: " if where else ""
            raise ConfigError(f"{loc}unknown {self.kind} {name!r}; {did_you_mean(str(name), self.names())}") from None

    def target(self, name: str) -> str | None:
        """``"module:attr"`` of a built-in name, else None (no import)."""
        return self._builtin.get(name)

    def names(self) -> list[str]:
        """All registered names (built-ins included), sorted."""
        self._load_providers()
        return sorted(set(self._items) | set(self._builtin))

    def __contains__(self, name: object) -> bool:
        if name in self._items or name in self._builtin:
            return True
        self._load_providers()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


_EEG = "foundation.modalities.eeg"
_FMRI = "foundation.modalities.fmri"
_US = "foundation.modalities.ultrasound"

MODELS = Registry("model", builtin={
    "deeperbrain": f"{_EEG}.model:DeeperBrain",
    "slim-brain": f"{_FMRI}.slim_brain:SlimBrain",
    "hiera4d": f"{_FMRI}.hiera4d:Hiera4D",
    "ultrasound-mtl": f"{_US}.model:UltrasoundMTL",
    "task-model": "foundation.finetune.task_model:TaskModel",
    "labram": f"{_EEG}.published.model:LaBraM",
    "cbramod": f"{_EEG}.published.model:CBraMod",
    "eegpt": f"{_EEG}.published.model:EEGPT",
    "biot": f"{_EEG}.published.model:BIOT",
    "bendr": f"{_EEG}.published.model:BENDR",
})
DATASETS = Registry("dataset", builtin={
    "eeg-windows": f"{_EEG}.dataset:EEGWindows",
    "fmri-windows": f"{_FMRI}.dataset:FMRIWindows",
    "ultrasound-csv": f"{_US}.dataset:UltrasoundDataset",
    "ultrasound-images": f"{_US}.labelled:UltrasoundImages",
})
OBJECTIVES = Registry("objective", builtin={
    "deeperbrain": f"{_EEG}.objective:DeeperBrainObjective",
    "slim-brain-jepa": f"{_FMRI}.jepa:JepaObjective",
    "ultrasound-mtl": f"{_US}.objective:MultiTaskObjective",
    "supervised": "foundation.finetune.task_model:Supervised",
})
# Readers of checkpoints the suite did not write (foundation.load / finetune --from): each has claims(source,
# folder), model_name(source, arch, folder), owns(encoder), fits(data name), load(source, arch, ...), adapt_data,
# adapt_dataset.
IMPORTERS = Registry("importer", builtin={
    "eeg-published": f"{_EEG}.published.importer:IMPORTER",
})
MLPS = Registry("mlp", providers=("foundation.layers.create_mlp",))
ACTIVATIONS = Registry("activation", providers=("foundation.layers.create_act",))
