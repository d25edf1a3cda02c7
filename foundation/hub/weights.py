"""Weights of exported models: safetensors with tied weights stored once, and strict loading.

Tied parameters (one tensor under two state-dict names) are stored once, under the first name, as
``safetensors.torch.save_model`` does; other tensors that overlap in memory are cloned so safetensors
accepts them. Loading checks names, shapes and dtypes against the model before copying anything, and a
:class:`~foundation.errors.CheckpointError` lists every missing, unexpected and mismatched key.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from foundation.errors import CheckpointError

__all__ = ["weights_for_saving", "load_weights", "tied_aliases", "listed"]

_MAX_LISTED = 20


def _alias_key(t: torch.Tensor) -> tuple | None:
    """Identity of a tensor's memory: equal keys mean the same weights under two names (tied)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def tied_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first name}`` for every state-dict entry that is the same memory as an earlier one."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, t in state.items():
        key = _alias_key(t)
        if key is None:
            continue
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def weights_for_saving(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict ready for safetensors: tied names stored once, other overlapping memory cloned."""
    state = {k: v.detach() for k, v in module.state_dict().items()}
    aliases = tied_aliases(state)
    out = {k: v for k, v in state.items() if k not in aliases}
    by_storage: dict[tuple, list[str]] = {}
    for name, t in out.items():
        if t.numel() and t.device.type != "meta":
            by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append(name)
    shared = {n for names in by_storage.values() if len(names) > 1 for n in names}
    return {k: (v.clone() if k in shared else v).contiguous() for k, v in out.items()}, aliases


def listed(items: list[str]) -> str:
    """Join names for a message, showing at most 20 and counting the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def load_weights(model: torch.nn.Module, file: Path, source: str, map_location: str | torch.device) -> None:
    """Strictly load ``file`` into ``model``: check names, shapes and dtypes first, then copy.

    Args:
        model: the freshly built model; tied parameters must already be tied, as its constructor does.
        file: the model.safetensors file.
        source: where it came from (folder or Hub repo@sha), for messages.
        map_location: device the tensors are read onto.

    Raises:
        CheckpointError: the file is missing or unreadable, or keys are missing, unexpected or mismatched
            in shape or dtype; the message lists them all (20 per kind).
    """
    if not file.is_file():
        raise CheckpointError(f"{source}: no {file.name}; the export is incomplete; re-export with save_pretrained")
    expected = model.state_dict()
    try:
        with safe_open(str(file), framework="pt") as f:
            stored = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{source}: {file.name} is not a readable safetensors file ({err}); re-export it") from err
    aliases = tied_aliases(expected)
    missing = sorted(k for k in expected if k not in stored and aliases.get(k) not in stored)
    unexpected = sorted(k for k in stored if k not in expected)
    dtype_names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                   torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
    mismatched = []
    for k, (shape, dtype) in sorted(stored.items()):
        if k in expected:
            want = expected[k]
            if shape != tuple(want.shape):
                mismatched.append(f"{k}: checkpoint {list(shape)} vs model {list(want.shape)}")
            elif want.dtype in dtype_names and dtype != dtype_names[want.dtype]:
                mismatched.append(f"{k}: checkpoint dtype {dtype} vs model {want.dtype} (pass dtype= to load)")
    if missing or unexpected or mismatched:
        lines = [f"{source}: {file.name} does not match {type(model).__name__}"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {listed(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {listed(unexpected)}")
        if mismatched:
            lines.append(f"mismatched ({len(mismatched)}): {listed(mismatched)}")
        lines.append("the checkpoint was saved from a different architecture or config; load it with the matching "
                     "config, or re-export it")
        raise CheckpointError("; ".join(lines))
    tensors = load_file(str(file), device=str(map_location))
    for alias, name in aliases.items():
        if alias not in tensors:
            tensors[alias] = tensors[name]
    model.load_state_dict(tensors, strict=True)
