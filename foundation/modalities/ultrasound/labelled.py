"""``ultrasound-images``: one classification task of the challenge CSVs as single labelled images.

The fine-tune runner (``foundation.finetune.runner``) wants one sample per item, a class count and
patient groups, where :class:`~foundation.modalities.ultrasound.dataset.UltrasoundDataset` yields
whole planned multi-task batches. This view reads the same CSVs and resized-array cache for one
classification task (``task``) and returns, without augmentation::

    {"x": [3, S, S] float in [0, 1], "label": int64 class, "index": int64 record}

``groups()`` gives each image's patient, so the runner's held-out split is patient-disjoint; set
``split: all`` to let the runner do the only split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from foundation.data.demo import is_demo
from foundation.errors import ConfigError, did_you_mean
from foundation.modalities.ultrasound.dataset import UltrasoundDataset, UltrasoundDatasetConfig, image_preprocessing
from foundation.modalities.ultrasound.tasks import task_table

__all__ = ["UltrasoundImagesConfig", "UltrasoundImages"]


@dataclass
class UltrasoundImagesConfig(UltrasoundDatasetConfig):
    """The multi-task data config plus the one classification task to serve."""

    task: str = field(default="breast_3cls", metadata={"help": "classification task id whose images are served"})

    def __post_init__(self) -> None:
        super().__post_init__()
        table = task_table(self.tasks, self.extra_tasks, "data")
        if self.task not in table:
            raise ConfigError(f"data.task: unknown task {self.task!r}; {did_you_mean(self.task, table)}")
        if table[self.task].type != "classification":
            raise ConfigError(f"data.task {self.task!r} is a {table[self.task].type} task; pick a classification "
                              f"task: {', '.join(t for t, s in table.items() if s.type == 'classification')}")
        if self.train_tasks not in ((), (self.task,)):
            raise ConfigError(f"data.train_tasks {self.train_tasks} with data.task {self.task!r}: leave train_tasks "
                              "empty (the images of data.task are read)")


class UltrasoundImages(torch.utils.data.Dataset):
    """Single images of one classification task (see the module docstring)."""

    config_class = UltrasoundImagesConfig
    collate = staticmethod(torch.utils.data.default_collate)

    @classmethod
    def prepare(cls, config: UltrasoundImagesConfig) -> dict[str, Any]:
        """Generate the demo corpus (``source: demo``) and build the resized-array cache; return its report."""
        return UltrasoundDataset.prepare(cls._inner_config(config))

    @staticmethod
    def _inner_config(config: UltrasoundImagesConfig) -> UltrasoundDatasetConfig:
        fields = {k: getattr(config, k) for k in UltrasoundDatasetConfig.__dataclass_fields__}
        return UltrasoundDatasetConfig(**{**fields, "train_tasks": (config.task,), "augment": False})

    def __init__(self, config: UltrasoundImagesConfig) -> None:
        self.config = config
        self.inner = UltrasoundDataset(self._inner_config(config))
        self.spec = self.inner.table[config.task]

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.spec.num_classes)]

    def groups(self) -> list[str]:
        """Patient of each image, for patient-disjoint splits."""
        return [r.group for r in self.inner.records]

    def item_labels(self) -> list[int]:
        """Class of every image, from the CSV records (no image is read)."""
        return [int(r.label) for r in self.inner.records]

    def item_sources(self) -> list[str]:
        """The image file of each item."""
        return [str(r.image) for r in self.inner.records]

    def preprocessing(self) -> dict[str, Any]:
        """What a model fine-tuned on these images expects (goes into config.json and the card)."""
        return {**image_preprocessing(self.config), "task": self.config.task}

    def __len__(self) -> int:
        return len(self.inner.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.inner.sample(i, train=False)
        return {"x": s["image"][0], "label": s["label"][0], "index": s["index"][0]}

    def describe(self) -> str:
        """One paragraph for the model card."""
        src = "the generated demo corpus" if is_demo(self.config.source) else self.config.source
        return (f"{len(self)} images of task {self.config.task} ({self.num_classes} classes, "
                f"{len(set(self.groups()))} patients) from {src} ({self.inner.report['n_left_out']} left out), "
                f"{self.config.image_size}x{self.config.image_size}.")
