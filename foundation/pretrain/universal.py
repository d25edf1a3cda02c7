"""Resume a ZeRO-3 checkpoint on another number of ranks through DeepSpeed's universal checkpoint.

ZeRO-3 partitions every parameter on its own, a layout :mod:`foundation.pretrain.reshard` does not rebuild. DeepSpeed
converts such a checkpoint into its *universal* form (``deepspeed.checkpoint.ds_to_universal``: one folder per
parameter under ``zero/``, holding its full ``fp32``, ``exp_avg`` and ``exp_avg_sq``) and its engine loads that form
on any number of ranks (``checkpoint.load_universal``). Here:

- :func:`convert` writes the universal form of checkpoint ``<run>/checkpoints/<tag>`` to ``<run>/universal/<tag>``
  (staged in a temporary sibling, renamed when complete; reused when present), once, on rank 0;
- :func:`load_universal` loads it into a running ZeRO-3 engine on every rank (the engine's universal switch is
  on for that one load only) and returns the checkpoint's client state;
- :func:`saved_states` reads the converted per-parameter states (``weights_only``) for the comparison the engine
  makes after every elastic load (:func:`foundation.pretrain.reshard.compare_states`).

The checkpoint folder has been checked by :meth:`~foundation.pretrain.checkpoint.CheckpointDir.verify` before any of
this runs (every state file readable by the ``weights_only`` unpickler), so DeepSpeed's converter reads only files
that hold tensors and plain data.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from foundation.errors import CheckpointError
from foundation.pretrain.reshard import MOMENTS, SavedLayout

__all__ = ["universal_folder", "convert", "load_universal", "saved_states"]

_DONE = "CONVERTED"  # marker of a complete conversion


def universal_folder(layout: SavedLayout) -> Path:
    """Where the universal form of ``layout``'s checkpoint goes: ``<run>/universal/<tag>``."""
    return layout.folder.parent.parent / "universal" / layout.folder.name


def convert(layout: SavedLayout) -> Path:
    """Convert a ZeRO-3 checkpoint to DeepSpeed's universal form (no-op when already converted).

    Returns:
        The universal folder.

    Raises:
        CheckpointError: DeepSpeed's converter failed (its message is kept).
    """
    from deepspeed.checkpoint import ds_to_universal

    out = universal_folder(layout)
    if (out / _DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    args = argparse.Namespace(input_folder=str(layout.folder), output_folder=str(stage), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its progress
            ds_to_universal.main(args)
        (stage / _DONE).write_text(layout.folder.name)
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except Exception as err:  # noqa: BLE001 - any converter failure becomes one clear error
        raise CheckpointError(f"{layout.folder}: DeepSpeed's universal conversion (ds_to_universal) failed: {err}; "
                              f"resume on the {layout.world_size} rank(s) that wrote it") from err
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


def load_universal(engine: Any, layout: SavedLayout, rank: int, barrier: Callable[[], None]) -> dict[str, Any]:
    """Convert (rank 0; the others wait) and load a ZeRO-3 checkpoint into ``engine`` on every rank.

    Returns:
        The checkpoint's client state.

    Raises:
        CheckpointError: the conversion failed, or DeepSpeed loaded nothing.
    """
    out = universal_folder(layout)
    try:
        if rank == 0:
            convert(layout)
    finally:
        barrier()  # reached even when rank 0 failed: the others then stop on the missing folder below
    if not (out / _DONE).is_file():
        raise CheckpointError(f"{layout.folder}: no universal form at {out} (rank 0's conversion failed; see its "
                              f"error); resume on the {layout.world_size} rank(s) that wrote it")
    config = engine._config
    config.load_universal_checkpoint = True
    try:
        path, client = engine.load_checkpoint(str(out.parent), tag=out.name)
    finally:
        config.load_universal_checkpoint = False
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the universal checkpoint {out}; delete it to convert anew")
    return client or {}


def saved_states(folder: Path, shapes: dict[str, tuple[int, ...]]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """The converted states of the parameters named in ``shapes``: ``(name, {"fp32", "exp_avg", "exp_avg_sq"})``,
    each of the parameter's full shape (ZeRO-3's universal form keeps them flat).

    Raises:
        CheckpointError: a parameter has no converted state.
    """
    for name, shape in shapes.items():
        states = {}
        for key in ("fp32", *MOMENTS):
            path = folder / "zero" / name / f"{key}.pt"
            if not path.is_file():
                raise CheckpointError(f"{path}: missing from the universal checkpoint; delete {folder} to convert "
                                      "anew")
            saved = torch.load(path, map_location="cpu", weights_only=True)
            flat = (saved["param"] if isinstance(saved, dict) else saved).float()  # ZeRO-3: the bare tensor
            if flat.numel() != torch.Size(shape).numel():
                raise CheckpointError(f"{path}: {flat.numel()} values for a parameter of shape {tuple(shape)}; "
                                      "resume with the recipe the run was started with")
            states[key] = flat.reshape(shape)
        yield name, states
