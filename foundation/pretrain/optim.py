"""AdamW parameter groups (decay / no decay / learning-rate multipliers) and the warmup-cosine scheduler."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foundation.config import TrainConfig
from foundation.pretrain.schedule import warmup_cosine

__all__ = ["param_groups", "build_optimizer", "WarmupCosineScheduler"]


def param_groups(module: nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer groups for ``module``'s trainable parameters.

    A submodule may define ``param_groups(lr, weight_decay)`` returning groups
    that carry an ``lr_scale`` key (NOBLE branches, layer-wise LR decay, task
    heads); its parameters are taken from there. All other parameters go to two
    groups: weight decay for matrices, none for vectors and scalars (biases,
    norms, embeddings of one row). Each group's ``lr`` is ``train.lr * lr_scale``;
    the scheduler scales it further, keeping the ratios.

    Returns:
        A list of dicts with ``params``, ``lr``, ``lr_scale``, ``weight_decay``, ``name``.

    Raises:
        ValueError: a parameter lands in two groups (a bug in a ``param_groups`` method).
    """
    groups: list[dict[str, Any]] = []
    claimed: set[int] = set()
    for prefix, sub in module.named_modules():
        custom = getattr(sub, "param_groups", None)
        if sub is module or not callable(custom):
            continue
        if any(id(p) in claimed for p in sub.parameters()):
            continue  # an ancestor already grouped this subtree
        for i, group in enumerate(custom(train.lr, train.weight_decay)):
            params = [p for p in group["params"] if p.requires_grad]
            if not params:
                continue
            scale = float(group.get("lr_scale", 1.0))
            groups.append({**group, "params": params, "lr_scale": scale, "lr": train.lr * scale,
                           "weight_decay": group.get("weight_decay", train.weight_decay),
                           "name": group.get("name", f"{prefix}.{i}")})
        claimed.update(id(p) for p in sub.parameters())
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad or id(p) in claimed:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    for name, params, wd in (("decay", decay, train.weight_decay), ("no_decay", no_decay, 0.0)):
        if params:
            groups.append({"params": params, "lr": train.lr, "lr_scale": 1.0, "weight_decay": wd, "name": name})
    seen: set[int] = set()
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"parameter of shape {tuple(p.shape)} appears in two optimizer groups")
            seen.add(id(p))
    return groups


def build_optimizer(module: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the recipe's betas and epsilon."""
    return torch.optim.AdamW(param_groups(module, train), lr=train.lr, betas=train.betas, eps=train.eps)


class WarmupCosineScheduler:
    """Sets every group's ``lr`` to ``base_lr * warmup_cosine(step)``; DeepSpeed calls ``step()`` per optimizer step.

    Works on a plain optimizer or on DeepSpeed's wrapped ones (anything with
    ``param_groups``). Its state is the step count alone.
    """

    def __init__(self, optimizer: Any, train: TrainConfig) -> None:
        self.optimizer = optimizer
        self.total, self.warmup, self.min_ratio = train.steps, train.warmup_steps, train.min_lr_ratio
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        mult = warmup_cosine(self.last_step, self.total, self.warmup, self.min_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * mult

    def step(self, increment: int = 1) -> None:
        self.last_step += increment
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    get_lr = get_last_lr

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
