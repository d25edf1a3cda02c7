"""Adapter state under DeepSpeed: gather ZeRO-3 shards before saving; only rank 0 writes.

Under DeepSpeed ZeRO-3 each rank holds a shard of every parameter, so a state dict collected naively is
empty; the tensors are gathered to full copies with ``deepspeed.zero.GatheredParameters`` first (peft's
documented pitfall: adapters saved under ZeRO-3 come out empty unless weights are gathered on save).
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

__all__ = ["gathered_state_dict", "is_writer_rank"]


def _is_zero_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


def gathered_state_dict(model: nn.Module, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Copy the parameters whose name passes ``keep`` to CPU, gathering ZeRO-3 shards first.

    Under ZeRO-3 (parameters carry DeepSpeed's ``ds_id``) the gather is collective: call it on every rank.
    Persistent buffers are copied as they are (ZeRO does not partition buffers); non-persistent ones, which
    ``state_dict()`` leaves out too, are skipped.

    Args:
        model: the (possibly DeepSpeed-wrapped, use ``engine.module``) model.
        keep: predicate on the parameter/buffer name from ``named_parameters()``/``named_buffers()``.

    Returns:
        name -> full tensor on CPU (a copy; safe to save after the gather context exits).
    """
    params = [(n, p) for n, p in model.named_parameters() if keep(n)]
    partitioned = [p for _, p in params if _is_zero_partitioned(p)]
    if partitioned:
        import deepspeed  # lazy: only ZeRO-3 runs need it

        ctx = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    else:
        ctx = nullcontext()
    with ctx:
        state = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params}
    state.update({n: b.detach().to("cpu", copy=True).contiguous() for n, b in _persistent_buffers(model) if keep(n)})
    return state


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, buffer)`` of the buffers ``state_dict()`` holds (non-persistent ones, e.g. fixed bases, are left out)."""
    out = []
    for prefix, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                out.append((f"{prefix}.{name}" if prefix else name, buf))
    return out


def is_writer_rank() -> bool:
    """True unless torch.distributed runs and this is not rank 0 (every rank gathers; rank 0 writes)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
