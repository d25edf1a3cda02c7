"""Ultrasound multi-head multi-task model over the 27 challenge tasks: task table, CSV reader, timm backbone + FPN
+ heads, losses and balancing, official metrics, submission writer, demo corpus.

Provides ``ultrasound-mtl`` (model), ``ultrasound-csv`` (dataset), ``ultrasound-images`` (one classification task
as single labelled images, for fine-tuning) and ``ultrasound-mtl`` (objective), which :mod:`foundation.registry`
finds by name.
Importing is cheap: timm, MONAI and pydicom load inside the functions that need them.
"""
from __future__ import annotations

from foundation.modalities.ultrasound.dataset import UltrasoundDatasetConfig, UltrasoundDataset
from foundation.modalities.ultrasound.labelled import UltrasoundImages, UltrasoundImagesConfig
from foundation.modalities.ultrasound.model import UltrasoundMTL, UltrasoundMTLConfig
from foundation.modalities.ultrasound.objective import MultiTaskObjective, MultiTaskObjectiveConfig
from foundation.modalities.ultrasound.tasks import BUILTIN_TASKS, TaskSpec, task_table

__all__ = [
    "BUILTIN_TASKS",
    "TaskSpec",
    "task_table",
    "UltrasoundDatasetConfig",
    "UltrasoundDataset",
    "UltrasoundImages",
    "UltrasoundImagesConfig",
    "UltrasoundMTL",
    "UltrasoundMTLConfig",
    "MultiTaskObjective",
    "MultiTaskObjectiveConfig",
]
