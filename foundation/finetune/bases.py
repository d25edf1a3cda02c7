"""Where a fine-tune starts: ``--from`` told apart and loaded (a suite folder, an imported checkpoint, ``arch:``).

``arch:NAME`` builds an architecture at random init: an importer's (``arch:labram``, ``arch:cbramod``,
``arch:eegpt``, ``arch:biot``, ``arch:bendr``; sized for the recipe's data by the importer) or a suite recipe's
encoder (``arch:deeperbrain-tiny``); reports label such runs "random init". Checkpoints the suite did not write
(published EEG release files, braindecode folders) go through an importer of
:data:`foundation.registry.IMPORTERS`. ``foundation.load`` and ``foundation finetune --from`` both use these.

Layer: finetune (reaches modalities only through the registries).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from foundation.errors import CheckpointError
from foundation.hub.names import CONFIG_NAME
from foundation.registry import MODELS

__all__ = ["ARCH_PREFIX", "importer_for", "base_model_name", "load_base"]

ARCH_PREFIX = "arch:"


def importer_for(source: str | os.PathLike, folder: Path | None = None) -> Any:
    """The importer (:data:`foundation.registry.IMPORTERS`) that reads ``source``, or None (a suite folder).

    Args:
        source: ``--from`` as given.
        folder: where a Hub id's files landed (None: ``source`` itself).
    """
    from foundation.registry import IMPORTERS

    for name in IMPORTERS.names():
        importer = IMPORTERS.get(name)
        if importer.claims(str(source), folder):
            return importer
    return None


def importer_of(encoder: nn.Module) -> Any:
    """The importer whose encoders ``encoder`` is one of (its data needs the importer's contract), or None."""
    from foundation.registry import IMPORTERS

    for name in IMPORTERS.names():
        importer = IMPORTERS.get(name)
        if importer.owns(encoder):
            return importer
    return None


def _arch_recipe(source: str) -> Any:
    """The suite recipe named by ``arch:<recipe>`` (e.g. ``arch:deeperbrain-tiny``)."""
    from foundation.config import load_recipe
    from foundation.errors import ConfigError

    try:
        return load_recipe(source[len(ARCH_PREFIX):])
    except ConfigError as err:
        from foundation.registry import IMPORTERS

        raise ConfigError(f"{source}: neither an imported architecture nor a suite recipe ({err}); imported "
                          f"architectures: labram, cbramod, eegpt, biot, bendr ({', '.join(IMPORTERS.names())})") from err


def base_model_name(source: str, arch: str | None = None, folder: Path | None = None) -> tuple[str, Any]:
    """``(registered model name, importer or None)`` of a ``--from`` source, without reading weights where the
    name can be told otherwise.

    Raises:
        CheckpointError: a file no importer reads, or a folder without a readable suite ``config.json``.
        ConfigError: ``arch:<name>`` that is neither an architecture nor a recipe.
    """
    importer = importer_for(source, folder)
    if importer is not None:
        return importer.model_name(str(source), arch, folder), importer
    if str(source).startswith(ARCH_PREFIX):
        return _arch_recipe(str(source)).model.name, None
    where = folder if folder is not None else Path(source)
    if where.is_file():
        raise CheckpointError(f"{source}: a file that no importer reads (known: the published EEG releases, "
                              ".pth/.ckpt/.pt/.bin/.safetensors); give a folder written by foundation-suite")
    try:
        name = json.loads((where / CONFIG_NAME).read_text(encoding="utf-8")).get("model_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    if not name:
        raise CheckpointError(f"{source}: no readable {CONFIG_NAME} with a model_name; not a folder written by "
                              "foundation-suite, nor a checkpoint an importer reads")
    return name, None


def load_base(source: str, revision: str | None = None, *, arch: str | None = None,
              window_seconds: float | None = None, exclude: tuple[str, ...] = (),
              overrides: dict[str, Any] | None = None, folder: Path | None = None) -> tuple[nn.Module, str, Any]:
    """The encoder a fine-tune starts from, a line saying how it was loaded, and its importer (None: a suite model).

    ``arch:<recipe>`` builds the recipe's encoder at random init; an importer's source (release file, braindecode
    folder, ``arch:labram``) goes through the importer, with ``window_seconds`` sizing its input; a suite folder or
    Hub id loads strictly with its class's ``from_pretrained``.
    """
    importer = importer_for(source, folder)
    if importer is not None:
        encoder, line = importer.load(str(source), arch, window_seconds=window_seconds, exclude=tuple(exclude),
                                      overrides=overrides, folder=folder)
        return encoder, line, importer
    if str(source).startswith(ARCH_PREFIX):
        recipe = _arch_recipe(str(source))
        encoder = MODELS.get(recipe.model.name, where=str(source))(recipe.model.config)
        return encoder.eval(), (f"{recipe.model.name} of recipe {recipe.name} at random init: no pretrained "
                                "weights"), None
    name = base_model_name(source, arch, folder)[0]
    encoder = MODELS.get(name, where=f"{source}/{CONFIG_NAME}, key model_name").from_pretrained(
        folder if folder is not None else source, revision=None if folder is not None else revision)
    return encoder, f"loaded {source} strictly", None
