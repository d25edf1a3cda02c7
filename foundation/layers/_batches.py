"""Feeding loader batches to a model, shared by the calibration and measurement tools."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from foundation.errors import ConfigError

ForwardFn = Callable[[nn.Module, Any], Any]


def run_batch(model: nn.Module, batch: Any, forward_fn: ForwardFn | None, where: str) -> Any:
    """Run one batch: ``forward_fn(model, batch)`` when given, else ``model(batch)`` for a tensor batch or
    ``model(batch[0])`` for an ``(input, ...)`` tuple or list.

    Raises:
        ConfigError: the batch is of another kind and no ``forward_fn`` was given.
    """
    if forward_fn is not None:
        return forward_fn(model, batch)
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0])
    raise ConfigError(
        f"{where}: cannot feed a batch of type {type(batch).__name__} to the model; batches must be a tensor or "
        f"an (input, ...) tuple, otherwise pass forward_fn=lambda model, batch: model(...)"
    )


def require_reiterable(loader: Iterable[Any], where: str) -> None:
    """Refuse a one-shot iterator where the loader is read more than once.

    Raises:
        ConfigError: ``iter(loader)`` returns the loader itself (a generator or iterator).
    """
    if iter(loader) is loader:
        raise ConfigError(f"{where}: the loader is a one-shot iterator but is read twice; pass a list of batches "
                          f"or a DataLoader")
