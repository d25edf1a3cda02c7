"""Adapter folders: gather (ZeRO-3), write atomically, push to and fetch from the Hub.

An adapter folder has peft's layout: ``adapter_config.json`` (with a
``peft_type`` naming the method) and ``adapter_model.safetensors`` holding only
the adapter's tensors. Under DeepSpeed ZeRO-3 each rank holds a shard of every
parameter, so a state dict collected naively is empty; the tensors are gathered
to full 16-bit (or 32-bit) copies with ``deepspeed.zero.GatheredParameters``
first (REFERENCE: "peft adapters under ZeRO-3 save empty unless 16-bit weights
are gathered on save").
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foundation.errors import CheckpointError, HubError

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "gathered_state_dict",
    "is_writer_rank",
    "staged_folder",
    "read_adapter_config",
    "push_adapter",
    "download_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


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


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``folder``; on success move each file into ``folder`` by rename.

    Files already in ``folder`` that the new save does not write are kept; every written file appears
    atomically (``os.replace``), so a crash never leaves a half-written ``adapter_model.safetensors``.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                dest = target / path.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``adapter_config.json`` of an adapter folder.

    Raises:
        CheckpointError: the folder, the file or its ``peft_type`` is missing, or the JSON is corrupt.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"adapter folder {str(folder)!r}: {CONFIG_NAME} not found; expected an adapter saved "
                              f"by save_adapter (files {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-save the adapter") from err
    if not isinstance(data, dict) or "peft_type" not in data:
        raise CheckpointError(f"{path}: no 'peft_type' field; expected e.g. 'LORA' or 'DOPAMINE'")
    if not (Path(folder) / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"adapter folder {str(folder)!r}: {WEIGHTS_NAME} not found next to {CONFIG_NAME}")
    return data


def push_adapter(folder: str | os.PathLike, repo_id: str, private: bool = False,
                 commit_message: str | None = None) -> str:
    """Push a saved adapter folder to the Hub through :func:`foundation.hub.push_folder`.

    Args:
        folder: a folder written by ``save_adapter`` (checked before any network call).
        repo_id: "user/name".
        private: create the repository private.
        commit_message: defaults to "Upload <peft_type> adapter".

    Returns:
        The commit sha returned by ``push_folder``.
    """
    cfg = read_adapter_config(folder)
    from foundation.hub import push_folder  # the hub layer is optional at import time

    message = commit_message or f"Upload {cfg['peft_type']} adapter"
    return push_folder(folder, repo_id, private=private, commit_message=message)


def download_adapter(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) from the Hub.

    Uses :func:`foundation.hub.download_folder` (``HF_ENDPOINT`` is honoured).

    Raises:
        ConfigError: ``repo_id`` is malformed.
        HubError: the endpoint refused, or the repository holds no adapter.
    """
    from foundation.hub import download_folder

    path = download_folder(repo_id, revision=revision, cache_dir=cache_dir,
                           allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise HubError(f"Hub repo {repo_id!r} holds no {CONFIG_NAME} + {WEIGHTS_NAME}; it is not an adapter "
                       f"repository (push one with push_adapter)")
    return path
