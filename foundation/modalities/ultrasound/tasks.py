"""The 27 tasks of the ultrasound multi-task challenge, declared as data, plus user-declared tasks.

Each task is a :class:`TaskSpec`: its id, type (``segmentation``, ``classification``,
``detection``, ``regression``), number of classes (segmentation counts the background)
or keypoints, whether horizontal flips keep its labels valid, its loss and its
official metric. The table follows the challenge's baseline repository as summarised
in the suite's reference notes; the flip flags mark the two left/right position tasks
(``fetal_head_pos_cls``, ``fetal_sacral_pos_cls``) as unsafe.

A recipe adds tasks with ``extra_tasks`` (a mapping of id -> fields), e.g.::

    extra_tasks:
      kidney_stone_cls: {type: classification, num_classes: 2, flip_safe: true}
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundation.errors import ConfigError, did_you_mean

__all__ = ["TaskSpec", "TASK_TYPES", "BUILTIN_TASKS", "task_table", "GLOBAL_TYPES", "DENSE_TYPES"]

TASK_TYPES = ("segmentation", "classification", "detection", "regression")
GLOBAL_TYPES = ("classification",)  # read the deepest backbone features
DENSE_TYPES = ("segmentation", "detection", "regression")  # read the FPN
_DEFAULT_LOSS = {"segmentation": "dice-ce", "classification": "ce", "detection": "giou-l1", "regression": "soft-argmax-l1"}
_DEFAULT_METRIC = {"segmentation": "dice", "classification": "auc", "detection": "iou", "regression": "mre"}


@dataclass(frozen=True)
class TaskSpec:
    """One task of the multi-task model.

    Args:
        task_id: the ``task_id`` column value in the CSVs.
        type: one of :data:`TASK_TYPES` (regression = keypoints).
        num_classes: classes (segmentation: including background; detection: 1 box).
        num_points: keypoints of a regression task (0 otherwise).
        flip_safe: a horizontal flip keeps the labels valid (False for left/right tasks).
        loss: the loss name (informative; the loss follows from the type).
        metric: the headline official metric.
    """

    task_id: str
    type: str
    num_classes: int = 0
    num_points: int = 0
    flip_safe: bool = True
    loss: str = ""
    metric: str = ""

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ConfigError(f"task {self.task_id!r}: unknown type {self.type!r}; {did_you_mean(self.type, TASK_TYPES)}")
        if self.type in ("segmentation", "classification") and self.num_classes < 2:
            raise ConfigError(f"task {self.task_id!r}: a {self.type} task needs num_classes >= 2, got {self.num_classes}")
        if self.type == "regression" and self.num_points < 1:
            raise ConfigError(f"task {self.task_id!r}: a regression (keypoint) task needs num_points >= 1, "
                              f"got {self.num_points}")
        if self.type != "regression" and self.num_points:
            raise ConfigError(f"task {self.task_id!r}: num_points is for regression tasks only, got {self.num_points}")
        if not self.loss:
            object.__setattr__(self, "loss", _DEFAULT_LOSS[self.type])
        if not self.metric:
            object.__setattr__(self, "metric", _DEFAULT_METRIC[self.type])


def _spec(task_id: str, type_: str, n: int, flip_safe: bool = True) -> TaskSpec:
    if type_ == "regression":
        return TaskSpec(task_id, type_, num_classes=0, num_points=n, flip_safe=flip_safe)
    return TaskSpec(task_id, type_, num_classes=n, flip_safe=flip_safe)


BUILTIN_TASKS: dict[str, TaskSpec] = {t.task_id: t for t in (
    _spec("FUGC", "regression", 2),
    _spec("IUGC", "regression", 3),
    _spec("fetal_femur", "regression", 2),
    _spec("breast_2cls", "classification", 2),
    _spec("breast_3cls", "classification", 3),
    _spec("fetal_head_pos_cls", "classification", 8, flip_safe=False),
    _spec("fetal_plane_cls", "classification", 6),
    _spec("fetal_sacral_pos_cls", "classification", 8, flip_safe=False),
    _spec("liver_lesion_2cls", "classification", 2),
    _spec("lung_2cls", "classification", 2),
    _spec("lung_disease_3cls", "classification", 3),
    _spec("organ_cls", "classification", 6),
    _spec("spinal_cord_injury_loc", "detection", 1),
    _spec("thyroid_nodule_det", "detection", 1),
    _spec("uterine_fibroid_det", "detection", 1),
    _spec("breast_lesion", "segmentation", 2),
    _spec("cardiac_multi", "segmentation", 4),
    _spec("carotid_artery", "segmentation", 2),
    _spec("cervix", "segmentation", 2),
    _spec("cervix_multi", "segmentation", 3),
    _spec("fetal_abdomen_multi", "segmentation", 5),
    _spec("fetal_head", "segmentation", 2),
    _spec("fetal_heart", "segmentation", 2),
    _spec("head_symphysis_multi", "segmentation", 3),
    _spec("lung", "segmentation", 2),
    _spec("ovary_tumor", "segmentation", 2),
    _spec("thyroid_nodule", "segmentation", 2),
)}


def task_table(tasks: tuple[str, ...] = (), extra_tasks: Mapping[str, Mapping[str, Any]] | None = None,
               where: str = "config") -> dict[str, TaskSpec]:
    """The tasks a model / dataset / objective works on, in a fixed order.

    Args:
        tasks: task ids to keep (empty: every built-in and extra task).
        extra_tasks: user tasks, id -> TaskSpec fields (``type``, ``num_classes``, ``num_points``, ``flip_safe``).
        where: recipe location for messages (e.g. ``"recipe x.yaml, key model"``).

    Returns:
        An ordered dict task id -> :class:`TaskSpec` (built-ins first, then extras, then filtered).

    Raises:
        ConfigError: an extra task clashes with a built-in or is malformed; an unknown id in ``tasks``.
    """
    table = dict(BUILTIN_TASKS)
    for task_id, fields in (extra_tasks or {}).items():
        if task_id in table:
            raise ConfigError(f"{where}.extra_tasks.{task_id}: already a built-in task; pick another id")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", task_id):
            raise ConfigError(f"{where}.extra_tasks: task id {task_id!r} may hold only letters, digits, '_' and '-'")
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{where}.extra_tasks.{task_id}: expected a mapping of TaskSpec fields, got {fields!r}")
        allowed = ("type", "num_classes", "num_points", "flip_safe", "loss", "metric")
        unknown = [k for k in fields if k not in allowed]
        if unknown:
            raise ConfigError(f"{where}.extra_tasks.{task_id}.{unknown[0]}: unknown field; "
                              f"{did_you_mean(str(unknown[0]), allowed)}")
        try:
            table[task_id] = TaskSpec(task_id, **dict(fields))
        except ConfigError as err:
            raise ConfigError(f"{where}.extra_tasks: {err}") from err
        except TypeError as err:
            raise ConfigError(f"{where}.extra_tasks.{task_id}: {err}") from err
    if not tasks:
        return table
    unknown = [t for t in tasks if t not in table]
    if unknown:
        raise ConfigError(f"{where}.tasks: unknown task {unknown[0]!r}; {did_you_mean(unknown[0], table)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"{where}.tasks: a task is listed twice in {list(tasks)}")
    return {t: table[t] for t in tasks}
