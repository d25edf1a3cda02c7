"""AdamW parameter groups (decay / no decay / learning-rate multipliers) and the warmup-cosine scheduler.

The optimizer is one fused AdamW step over every parameter (``fused=True``; ``foreach`` where the device has no
fused kernel), and groups that share every hyper-parameter are merged first: a model that asks for a pair of
groups per head (the ultrasound model: 58) steps, and under ZeRO reduces, as a handful (about 6).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foundation.config import TrainConfig
from foundation.pretrain.schedule import warmup_cosine

__all__ = ["param_groups", "merge_groups", "build_optimizer", "WarmupCosineScheduler"]


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


def merge_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge the groups whose hyper-parameters (every key but ``params`` and ``name``) are equal.

    The update AdamW applies to a parameter depends only on its group's hyper-parameters, so merging leaves
    every number as it was. The merged group is named after its first member and lists all of them under
    ``members`` (in order); groups keep the order of their first member.

    Returns:
        A list of dicts with ``params``, ``name``, ``members`` and the shared hyper-parameters.
    """
    merged: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        hyper = {k: v for k, v in g.items() if k not in ("params", "name", "members")}
        key = tuple(sorted((k, repr(v)) for k, v in hyper.items()))
        names = g.get("members", [g.get("name", f"group{len(merged)}")])
        if key in merged:
            merged[key]["params"] += list(g["params"])
            merged[key]["members"] += names
        else:
            merged[key] = {**hyper, "params": list(g["params"]), "name": names[0], "members": list(names)}
    return list(merged.values())


def build_optimizer(module: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the merged :func:`param_groups` with the recipe's betas and epsilon, fused where it can be.

    ``fused=True`` needs every parameter floating-point on a device with a fused kernel (CPU and CUDA have
    one); otherwise the ``foreach`` (multi-tensor) path runs. Both compute what the single-tensor path does.
    """
    groups = merge_groups(param_groups(module, train))
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    fused = bool(params) and all(p.is_floating_point() for p in params) and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, eps=train.eps,
                             fused=fused or None, foreach=None if fused else True)


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
