"""The multi-task training objective: per-task losses on routed head outputs, combined by a loss balancer.

The published baseline trains one randomly chosen task per step with equal weights
(``balancing: static``, single-task batches); the other balancers are in
:mod:`foundation.modalities.ultrasound.balancing`. Reported metrics (fixed keys, so that
every rank logs the same ones): the loss of each task type summed over the batch's
tasks of that type (0 when absent) and the number of tasks in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.modalities.ultrasound.balancing import BALANCING_MODES, LossBalancer
from foundation.modalities.ultrasound.losses import TaskLosses
from foundation.modalities.ultrasound.tasks import TASK_TYPES, task_table

__all__ = ["MultiTaskObjectiveConfig", "MultiTaskObjective"]

_SHORT = {"segmentation": "seg", "classification": "cls", "detection": "det", "regression": "kp"}


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class MultiTaskObjectiveConfig:
    """Loss balancing and loss-term weights."""

    tasks: tuple[str, ...] = field(default=(), metadata=_h("task table (must match the model's; empty: all)"))
    extra_tasks: dict[str, Any] = field(default_factory=dict, metadata=_h("user tasks, as in the model section"))
    balancing: str = field(default="static", metadata=_h("static | uncertainty | dwa | gradnorm"))
    static_weights: dict[str, float] = field(default_factory=dict, metadata=_h("static mode: task id -> weight (default 1)"))
    dwa_temperature: float = field(default=2.0, metadata=_h("DWA temperature tau"))
    dwa_period: int = field(default=20, metadata=_h("optimizer steps per DWA period"))
    gradnorm_alpha: float = field(default=1.5, metadata=_h("GradNorm asymmetry alpha"))
    box_l1_weight: float = field(default=5.0, metadata=_h("detection: weight of the box L1 term (GIoU weighs 1)"))
    objectness_weight: float = field(default=1.0, metadata=_h("detection: weight of the objectness BCE"))

    def __post_init__(self) -> None:
        if self.balancing not in BALANCING_MODES:
            raise ConfigError(f"objective.balancing must be one of {', '.join(BALANCING_MODES)}, got {self.balancing!r}")
        if self.dwa_temperature <= 0 or self.dwa_period < 1 or self.gradnorm_alpha < 0:
            raise ConfigError("objective.dwa_temperature must be > 0, dwa_period >= 1 and gradnorm_alpha >= 0")
        if any(w < 0 for w in self.static_weights.values()):
            raise ConfigError(f"objective.static_weights must be >= 0, got {self.static_weights}")
        task_table(self.tasks, self.extra_tasks, "objective")


class MultiTaskObjective(nn.Module):
    """``forward(model, batch) -> (loss, metrics)`` over a (single- or mixed-task) batch."""

    config_class = MultiTaskObjectiveConfig

    def __init__(self, config: MultiTaskObjectiveConfig) -> None:
        super().__init__()
        self.config = config
        self.table = task_table(config.tasks, config.extra_tasks, "objective")
        self.task_ids = list(self.table)
        self.losses = TaskLosses(config.box_l1_weight, config.objectness_weight)
        self.balancer = LossBalancer(self.task_ids, config.balancing, config.static_weights, config.dwa_temperature,
                                     config.dwa_period, config.gradnorm_alpha)

    def task_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor | None]:
        """Per-task losses ``[T]`` (0 where absent), presence ``[T]`` and, for GradNorm, ``||dL_t/dF||`` ``[T]``."""
        if list(model.task_ids) != self.task_ids:
            raise ConfigError(f"objective.tasks ({len(self.task_ids)} tasks) differ from model.tasks "
                              f"({len(model.task_ids)}); give both sections (and data) the same tasks/extra_tasks")
        deep, fpn = model.features(batch["image"])
        outputs = model.run_heads(deep, fpn, batch["task"], batch.get("routes"))
        T = len(self.task_ids)
        losses = torch.zeros(T, device=deep.device, dtype=torch.float32)
        present = torch.zeros(T, dtype=torch.bool, device=deep.device)
        norms = torch.zeros(T, device=deep.device) if self.config.balancing == "gradnorm" else None
        for tid, (rows, out) in outputs.items():
            t = self.task_ids.index(tid)
            loss = self.losses(self.table[tid].type, out, batch, rows)
            if norms is not None and loss.requires_grad:
                # the deepest backbone map is shared by every task (dense heads reach it through the FPN)
                (g_deep,) = torch.autograd.grad(loss, deep, retain_graph=True)
                norms[t] = g_deep.float().norm()
            losses = losses.index_put((torch.tensor([t], device=deep.device),), loss.reshape(1).float())
            present[t] = True
        return losses, present, norms

    def prepare(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Route the batch's rows to their tasks (data-dependent; runs before the compiled region).

        Returns:
            The batch with ``routes`` (:meth:`~.model.UltrasoundMTL.routes` of ``task``) added.
        """
        return {**batch, "routes": model.routes(batch["task"])}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "routes" not in batch:
            batch = self.prepare(model, batch)
        losses, present, norms = self.task_losses(model, batch)
        total, _ = self.balancer(losses, present, norms)
        # heads of tasks absent from this batch get zero gradients rather than none: data-parallel ranks
        # see different tasks, and DeepSpeed ZeRO-1/2 reduce gradients in buckets that must hold the
        # same parameters on every rank (a head without a gradient shifts the buckets)
        absent = [t for t in self.task_ids if t not in batch["routes"]]  # known on the host: no device read
        if absent and torch.is_grad_enabled():
            total = total + 0.0 * sum(p.sum() for t in absent for p in model.heads[t].parameters())
        metrics: dict[str, Any] = {}
        for kind in TASK_TYPES:
            mask = torch.tensor([self.table[t].type == kind for t in self.task_ids], device=losses.device)
            metrics[f"loss_{_SHORT[kind]}"] = (losses.detach() * (mask & present)).sum()
        metrics["tasks_in_batch"] = present.sum().float()
        return total, metrics

    def on_step_end(self, step: int) -> None:
        self.balancer.on_step_end(step)
