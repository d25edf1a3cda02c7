"""The contract every registered dataset keeps, and the one place a dataset is prepared in a distributed run.

A dataset class (registered in :data:`foundation.registry.DATASETS`) has a ``config_class`` dataclass and:

- ``prepare(config) -> report`` (classmethod): generate the demo corpus (``data.source: demo``) and build the
  cache (:mod:`foundation.data.cache`); returns the cache report; a no-op when the cache is current;
- ``Dataset(config)``: reads the prepared cache (never builds it), with ``__len__`` and ``__getitem__``;
- ``collate(items) -> batch``: the collate_fn of its DataLoader;
- ``groups() -> list[str]``: the subject / patient of every item, for group-disjoint splits;
- ``describe() -> str``: one paragraph about the data, for the model card.

and, optionally (the suite's datasets have them all):

- ``item_labels() -> list``: the label of every item without loading the items (stratified splits);
- ``item_sources() -> list[str]``: the file each item comes from (prediction CSVs);
- ``preprocessing() -> dict``: what a model trained on the data expects of new data (sampling rate, grid,
  image size, units, normalisation); written into a model's ``config.json`` and card, checked by ``predict``;
- ``shard_map() -> ShardMap``: which cache shard holds each item and each shard's files
  (:mod:`foundation.data.shard_plan`); needed by ``train.shard_assignment: rank`` (every shipped pretraining
  dataset has it);
- ``use_shards(shards)``: told the rank's shards under ``train.shard_assignment: rank``, for a dataset whose
  items draw from several records (the ultrasound planned batches draw them from those shards only).

A wrong input (a bad file, a cache of other settings, a wrong shape) raises
:class:`~foundation.errors.DataError`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["DatasetProtocol", "prepare_dataset", "class_labels", "item_rows", "preprocessing_of", "check_preprocessing"]


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


def class_labels(dataset: Any) -> list[int]:
    """The class index of every item: ``item_labels()`` when the dataset has it, else one pass over the items."""
    if hasattr(dataset, "item_labels"):
        return [int(v) for v in dataset.item_labels()]
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        labels.append(int(item["label"] if isinstance(item, dict) else item[1]))
    return labels


def item_rows(dataset: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """The leading columns of a predictions CSV for ``indices``: ``index``, ``subject`` (``groups()``) and
    ``source`` (``item_sources()``), each where the dataset has it."""
    groups = dataset.groups() if hasattr(dataset, "groups") else None
    sources = dataset.item_sources() if hasattr(dataset, "item_sources") else None
    rows = []
    for i in indices:
        row: dict[str, Any] = {"index": int(i)}
        if groups is not None:
            row["subject"] = str(groups[i])
        if sources is not None:
            row["source"] = str(sources[i])
        rows.append(row)
    return rows


def preprocessing_of(dataset: Any) -> dict[str, Any]:
    """``dataset.preprocessing()``, or ``{}`` for a dataset that does not say."""
    return dict(dataset.preprocessing()) if hasattr(dataset, "preprocessing") else {}


def check_preprocessing(expected: dict[str, Any], given: dict[str, Any], model: str, data: str) -> None:
    """Refuse data prepared otherwise than the model expects: every field both name must agree.

    Args:
        expected: the model's ``preprocessing`` (its ``config.json``); ``{}`` checks nothing.
        given: the data set's :func:`preprocessing_of`.
        model, data: names for the message.

    Raises:
        DataError: naming each field that differs, with both values.
    """
    from foundation.errors import DataError

    diff = {k: (expected[k], given[k]) for k in expected if k in given and expected[k] != given[k]}
    if diff:
        lines = "; ".join(f"{k}: model {a!r}, data {b!r}" for k, (a, b) in sorted(diff.items()))
        raise DataError(f"{data} is prepared otherwise than {model} expects ({lines}); set the data recipe's fields "
                        f"to the model's (e.g. --set data.<field>=<value>) so the inputs mean what they meant in training")
