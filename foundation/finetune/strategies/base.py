"""The fine-tuning job and the interface every strategy keeps.

A strategy turns a task model (a pretrained encoder plus a new head, see
:class:`~foundation.finetune.task_model.TaskModel`) and a train/held-out split into held-out predictions
and saved files. The runner (:mod:`foundation.finetune.runner`) only orchestrates:

    strategy.fit(job)                      # train (or fit a probe)
    out, y = strategy.predict(job)         # held-out outputs: probabilities [S, C] or values [S] / [S, K]
    files = strategy.save(job, metrics)    # model, adapter, head or probe weights (every rank)
    files |= strategy.report(job)          # extra files about what was trained (every rank)
    strategy.trainable_params()
"""
from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from foundation.config import RecipeConfig
from foundation.errors import DataError
from foundation.eval.probe import ProbeResult, fit_probe
from foundation.finetune.features import split_batch
from foundation.finetune.options import FinetuneOptions
from foundation.finetune.task_model import TaskModel

__all__ = ["FinetuneJob", "Strategy"]


@dataclass
class FinetuneJob:
    """Everything a strategy reads.

    Args:
        recipe: the fine-tuning recipe (train, deepspeed and objective sections are used).
        model: the task model; its encoder holds the pretrained weights, its head is new.
        train: the training split (a torch Dataset of dict batches or pairs).
        test: the held-out split.
        out: the run folder.
        opts: the fine-tuning options.
        base: where the pretrained weights came from (for the model card; "" in memory).
        unused: encoder parameter names ``forward_features`` does not reach (frozen; adapters skip them).
        feature_key: a key identifying the frozen features (probes cache them under it; None: no cache).
    """

    recipe: RecipeConfig
    model: TaskModel
    train: Any
    test: Any
    out: Path
    opts: FinetuneOptions
    base: str = ""
    unused: list[str] = field(default_factory=list)
    feature_key: str | None = None

    @property
    def task(self) -> str:
        return self.model.config.task

    @property
    def keys(self) -> dict[str, str]:
        """``input_key`` and ``label_key`` of the recipe's supervised objective."""
        obj = self.recipe.objective.config
        return {"input_key": obj.input_key, "label_key": obj.label_key}

    @property
    def train_groups(self) -> list[str] | None:
        """Subject of every training item (``job.train`` a Subset of a dataset with ``groups()``), else None."""
        data, indices = getattr(self.train, "dataset", None), getattr(self.train, "indices", None)
        if data is None or indices is None or not hasattr(data, "groups"):
            return None
        groups = data.groups()
        return [str(groups[i]) for i in indices]

    def fit_probe(self, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
                  kind: str) -> ProbeResult:
        """:func:`~foundation.eval.probe.fit_probe` on training features ``X [S, D]``, its regularisation chosen by
        cross-validation folds split by training subject (no subject on both sides of a fold).

        When the training subjects are too few for that (a class seen in one subject only), the folds split by
        sample instead, and a note on stderr says so: the chosen penalty may then favour memorising subjects.
        """
        import numpy as np

        groups = self.train_groups
        seed = self.recipe.train.seed
        if groups is not None and len(groups) == len(y):
            try:
                return fit_probe(X, y, X_test, y_test, kind=kind, task=self.task, seed=seed, groups=np.asarray(groups))
            except DataError as err:
                if "training subject" not in str(err):
                    raise
                if os.environ.get("RANK", "0") == "0":
                    print(f"note: probe regularisation chosen by folds over samples, not subjects ({err})",
                          file=sys.stderr, flush=True)
        return fit_probe(X, y, X_test, y_test, kind=kind, task=self.task, seed=seed)

    def loader(self, data: Any, batch_size: int = 64) -> DataLoader:
        """A fixed-order loader over ``data`` (evaluation, features)."""
        return DataLoader(data, batch_size=batch_size, collate_fn=getattr(data, "collate", None))

    def batches(self, data: Any) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(inputs, labels)`` pairs over ``data`` in a fixed order."""
        for batch in self.loader(data):
            yield split_batch(batch, **self.keys)


class Strategy(ABC):
    """One way to fine-tune; instances are built per run by :func:`~foundation.finetune.strategies.make_strategy`."""

    name: str = ""
    new_head: bool = True  # trains a new head, started as --head-init says (False: probes fit their own)

    @abstractmethod
    def fit(self, job: FinetuneJob) -> None:
        """Train on ``job.train``."""

    @abstractmethod
    def predict(self, job: FinetuneJob) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out ``(out, y)``: classification ``out`` = probabilities ``[S, C]``; regression values shaped as ``y``."""

    @abstractmethod
    def trainable_params(self) -> int:
        """How many parameters the strategy trained."""

    @abstractmethod
    def save(self, job: FinetuneJob, metrics: dict[str, float]) -> dict[str, str]:
        """Write what was trained into ``job.out``; call on every rank (ZeRO-3 gathers). Returns name -> path."""

    def report(self, job: FinetuneJob) -> dict[str, str]:
        """Extra files about what was trained (name -> path); none by default. Call on every rank."""
        return {}
