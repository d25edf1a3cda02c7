"""Batch helpers shared by pretraining, fine-tuning and the studies."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["to_device"]


def to_device(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """Move every tensor of a nested batch to ``device``; cast floating tensors to ``float_dtype`` when given."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if float_dtype is not None and batch.is_floating_point():
            batch = batch.to(float_dtype)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, float_dtype) for v in batch)
    return batch
