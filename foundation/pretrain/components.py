"""Build a recipe's model, dataset and objective, and the module DeepSpeed trains.

Contract of registered components (each builder has a ``config_class`` dataclass):

- model: ``Model(config) -> nn.Module`` with the hub mixin.
- dataset: keeps :class:`foundation.data.protocol.DatasetProtocol` (``prepare``, ``collate``,
  ``groups``, ``describe``); :func:`build_components` prepares it through
  :func:`foundation.data.protocol.prepare_dataset` (local rank 0 builds, the others wait).
- objective: ``Objective(config) -> nn.Module`` whose ``forward(model, batch)``
  returns ``(loss, metrics)``: a scalar tensor and a dict of scalar tensors or
  floats. It may hold trainable parameters (loss weights); it only calls the
  model or its submodules (never reads a parameter outside its module's
  forward), which keeps ZeRO-3 parameter gathering correct.
- either may define ``on_step_end(step)`` (EMA targets, schedules).
- the objective may define ``prepare(model, batch) -> batch``: the data-dependent steps of a training step
  (mask sampling), which :class:`TrainModule` runs before the compiled region when ``train.compile`` is on;
  ``forward`` then finds their results in the batch. Without it, ``forward`` does everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from foundation.config import RecipeConfig
from foundation.data.protocol import prepare_dataset
from foundation.registry import DATASETS, MODELS, OBJECTIVES

__all__ = ["TrainModule", "Components", "build_model", "build_objective", "build_components"]


class TrainModule(nn.Module):
    """The model and its objective as one module, the unit DeepSpeed wraps and checkpoints.

    State-dict keys are ``model.*`` and ``objective.*``; export keeps ``model.*``.
    """

    def __init__(self, model: nn.Module, objective: nn.Module, touch_all_params: bool = False) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.touch_all_params = touch_all_params
        self._compiled: Any = None  # set by compile_step

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        prepare = getattr(self.objective, "prepare", None)
        if prepare is not None:
            batch = prepare(self.model, batch)  # mask sampling: data-dependent sizes, outside the compiled region
        step = self._compiled if self._compiled is not None else self.step
        loss, metrics = step(batch)
        if self.touch_all_params:
            # Every trainable parameter gets a gradient (zero where the batch did not reach it: a task head
            # absent from this rank's batch), so all ranks reduce the same gradient buckets; otherwise ZeRO-1/2
            # all-reduces of different sizes abort the job. Only the unreached ones are touched.
            unreached = self.unreached_params(loss)
            if unreached:
                loss = loss + 0.0 * sum(p.sum() for p in unreached)
        return loss, metrics

    def unreached_params(self, loss: torch.Tensor) -> list[nn.Parameter]:
        """Trainable parameters that ``loss``'s autograd graph does not reach (they would get no gradient).

        One walk over the graph's nodes (no backward): a parameter is reached when the graph holds its
        gradient-accumulation node.
        """
        reached: set[int] = set()
        seen: set[Any] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)  # an AccumulateGrad node: the leaf it writes to
            if variable is not None:
                reached.add(id(variable))
            stack.extend(nxt for nxt, _ in node.next_functions)
        return [p for p in self.parameters() if p.requires_grad and id(p) not in reached]

    def step(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Model and objective on a prepared batch: the region ``train.compile`` compiles."""
        return self.objective(self.model, batch)

    def compile_step(self, mode: str = "default") -> None:
        """``torch.compile`` :meth:`step`; parameters, state-dict keys and ``forward`` stay as they are."""
        self._compiled = torch.compile(self.step, mode=mode)

    def on_step_end(self, step: int) -> None:
        for part in (self.model, self.objective):
            hook = getattr(part, "on_step_end", None)
            if hook is not None:
                hook(step)


@dataclass
class Components:
    model: nn.Module
    objective: nn.Module
    dataset: Any


def build_model(recipe: RecipeConfig) -> nn.Module:
    """The recipe's model, freshly initialised."""
    return MODELS.get(recipe.model.name)(recipe.model.config)


def build_objective(recipe: RecipeConfig) -> nn.Module:
    """The recipe's objective."""
    return OBJECTIVES.get(recipe.objective.name)(recipe.objective.config)


def build_components(recipe: RecipeConfig, prepare: bool = True) -> Components:
    """Build model, objective and dataset; with ``prepare``, prepare the data first (call on every rank)."""
    dataset_cls = DATASETS.get(recipe.data.name)
    if prepare:
        prepare_dataset(dataset_cls, recipe.data.config)
    return Components(model=build_model(recipe), objective=build_objective(recipe),
                      dataset=dataset_cls(recipe.data.config))
