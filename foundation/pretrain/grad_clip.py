"""Gradient clipping at ZeRO stage 0 in one ``foreach`` pass, in place of DeepSpeed's per-parameter loop.

At ZeRO stage 0 without bf16/fp16 DeepSpeed clips in ``DeepSpeedEngine.clip_fp32_gradients``: its own
``deepspeed.runtime.utils.clip_grad_norm_`` takes one norm per parameter in a Python loop, all-reduces the total
norm over the data-parallel group (even on one rank; every rank holds the same averaged gradients there, so the
mean of the ranks' norms is each rank's norm) and scales every gradient. ``torch.nn.utils.clip_grad_norm_`` with
``foreach=True`` computes the same total norm (the 2-norm of the per-parameter 2-norms) and the same factor
``min(1, max_norm / (norm + 1e-6))`` in a few batched kernels and no collective.

Where this applies the engine gives DeepSpeed ``gradient_clipping: 0`` and clips itself, after ``engine.backward``
at the accumulation boundary: there, at stage 0, DeepSpeed has already averaged the gradients over the ranks
(``DeepSpeedEngine._backward_epilogue`` -> ``allreduce_gradients`` at the boundary) and the optimizer has not
stepped yet (``engine.step`` -> ``_take_model_step``), which is where DeepSpeed would clip. ZeRO 1-3 keep
DeepSpeed's clipping (the gradients are partitioned there), and so do bf16/fp16 and torch autocast (DeepSpeed's
mixed-precision optimizers clip their own fp32 copies).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["split_clipping", "StageZeroClip"]


def _enabled(cfg: dict[str, Any], key: str) -> bool:
    section = cfg.get(key)
    return isinstance(section, dict) and bool(section.get("enabled", False))


def split_clipping(ds_config: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Who clips: DeepSpeed, or the engine (ZeRO stage 0 in fp32).

    Args:
        ds_config: the DeepSpeed config dict (``foundation.pretrain.engine.deepspeed_config``).

    Returns:
        (the config to give DeepSpeed, the max norm the engine clips at). Where the engine clips, the config is a
        copy with ``gradient_clipping: 0.0``; elsewhere it is ``ds_config`` itself and the max norm is 0.0.
    """
    max_norm = float(ds_config.get("gradient_clipping", 0.0) or 0.0)
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    mixed = any(_enabled(ds_config, k) for k in ("bf16", "bfloat16", "fp16", "torch_autocast"))
    if max_norm <= 0.0 or stage != 0 or mixed:
        return ds_config, 0.0
    return dict(ds_config, gradient_clipping=0.0), max_norm


class StageZeroClip:
    """Clip a module's gradients to a total 2-norm at the accumulation boundary of a DeepSpeed stage-0 engine.

    Args:
        module: the module DeepSpeed trains; its trainable parameters are listed once, here.
        max_norm: the recipe's ``deepspeed.gradient_clipping`` (> 0).
    """

    def __init__(self, module: nn.Module, max_norm: float) -> None:
        if max_norm <= 0.0:
            raise ValueError(f"StageZeroClip: max_norm must be > 0, received {max_norm}")
        self.params: list[nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        self.max_norm = max_norm

    def __call__(self) -> torch.Tensor:
        """Clip; call after ``engine.backward`` of the micro-step that ends an accumulation, before ``engine.step``.

        Returns:
            The total gradient norm before clipping (a 0-dim tensor: what DeepSpeed's ``clip_grad_norm_``
            computes), without a host sync.
        """
        return clip_total_norm(self.params, self.max_norm)


def clip_total_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over ``params`` (2-norm, batched ``foreach`` kernels, no host sync)."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0, foreach=True)
