"""The contract every registered dataset keeps, and the one place a dataset is prepared in a distributed run.

A dataset class (registered in :data:`foundation.registry.DATASETS`) has a ``config_class`` dataclass and:

- ``prepare(config) -> report`` (classmethod): generate the demo corpus (``data.source: demo``) and build the
  cache (:mod:`foundation.data.cache`); returns the cache report; a no-op when the cache is current;
- ``Dataset(config)``: reads the prepared cache (never builds it), with ``__len__`` and ``__getitem__``;
- ``collate(items) -> batch``: the collate_fn of its DataLoader;
- ``groups() -> list[str]``: the subject / patient of every item, for group-disjoint splits;
- ``describe() -> str``: one paragraph about the data, for the model card.

A wrong input (a bad file, a cache of other settings, a wrong shape) raises
:class:`~foundation.errors.DataError`.
"""
from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["DatasetProtocol", "prepare_dataset"]


@runtime_checkable
class DatasetProtocol(Protocol):
    """What the engine, the fine-tune runner and the model card expect of a dataset (see the module docstring)."""

    config_class: type

    @classmethod
    def prepare(cls, config: Any) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...

    def collate(self, items: list[Any]) -> Any: ...

    def groups(self) -> list[str]: ...

    def describe(self) -> str: ...


def prepare_dataset(dataset_cls: type, config: Any) -> dict[str, Any] | None:
    """Run ``dataset_cls.prepare(config)`` once per node: local rank 0 builds while the other ranks wait.

    Without an initialised ``torch.distributed`` process group it simply calls ``prepare``. In a group, local
    rank 0 (``LOCAL_RANK``, else the global rank) prepares and every rank then meets at a barrier; the barrier
    is reached even when rank 0's prepare fails, so the others go on and fail on the missing cache with a
    :class:`~foundation.errors.DataError` instead of hanging. Every rank must call this.

    Returns:
        The report on the rank that prepared, else None.
    """
    if not hasattr(dataset_cls, "prepare"):
        return None
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dataset_cls.prepare(config)
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    report = None
    try:
        if local_rank == 0:
            report = dataset_cls.prepare(config)
    finally:
        dist.barrier()
    return report
