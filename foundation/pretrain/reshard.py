"""Resume a run on another number of ranks: read a checkpoint's shards whole, deal them out to the new ranks.

DeepSpeed writes a checkpoint as one file per rank for the partitioned states (ZeRO 1/2: every rank's slice of
the flat fp32 master weights and of Adam's moments, ``*zero_pp_rank_<r>_mp_rank_00_optim_states.pt``) and one
file for the rest (``mp_rank_00_model_states.pt``: the module's weights and buffers, the LR schedule, the step
counters and our client state). Its own loader expects as many shards as there are ranks now. Here:

- :func:`saved_states` rebuilds every parameter's full fp32 master weight and Adam moments from the shards, by
  the fragment table DeepSpeed stores with each shard (``param_slice_mappings``: which slice of the rank's flat
  partition holds which part of which parameter), one parameter at a time from memory-mapped files, each file
  read by torch's ``weights_only`` unpickler (the folder is checked by :meth:`CheckpointDir.verify` first);
- :func:`load_resharded` writes them into a freshly initialised engine of any world size through DeepSpeed's
  own fragment API (``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``), restores Adam's step
  count, the LR schedule, buffers and DeepSpeed's counters, then reads every state back
  (``safe_get_full_*``) and compares it with the saved one, so a wrong re-partition stops the run instead of
  training on;
- a ZeRO-0 checkpoint keeps whole states in ``mp_rank_00_model_states.pt``: DeepSpeed's loader reads it on any
  number of ranks (:func:`needs_resharding` says False) and only the check runs.

ZeRO-3 partitions each parameter on its own (another layout): resuming one on another number of ranks is refused
with a :class:`CheckpointError` that says what to do.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from foundation.errors import CheckpointError

__all__ = ["MOMENTS", "SavedLayout", "compare_states", "global_batch", "live_state", "live_states", "load_resharded", "needs_resharding",
           "read_layout", "saved_states"]

MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam's first and second moments, as torch and DeepSpeed name them
_MODEL_STATES = "mp_rank_00_model_states.pt"
_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def _load(path: Path) -> dict[str, Any]:
    """A DeepSpeed state file through the ``weights_only`` unpickler (memory-mapped)."""
    from foundation.pretrain.checkpoint import _allowed_globals

    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


@dataclass
class SavedLayout:
    """How a checkpoint was written.

    Attributes:
        folder: the tag's folder.
        world_size: data-parallel ranks that wrote it.
        zero_stage: 0-3.
        shards: the ZeRO optimizer shard files, by rank (empty at stage 0).
        model_states: the contents of ``mp_rank_00_model_states.pt`` (module, schedule, counters, client state).
    """

    folder: Path
    world_size: int
    zero_stage: int
    shards: list[Path] = field(default_factory=list)
    model_states: dict[str, Any] = field(default_factory=dict)


def read_layout(folder: str | Path) -> SavedLayout:
    """World size, ZeRO stage and files of a (verified) checkpoint folder.

    Raises:
        CheckpointError: no ``mp_rank_00_model_states.pt`` (ZeRO-3 keeps one per rank: named in the message),
            or shards missing for some ranks.
    """
    folder = Path(folder)
    shards = sorted((p for p in folder.glob("*optim_states.pt") if _SHARD.search(p.name)),
                    key=lambda p: int(_SHARD.search(p.name).group(1)))
    main = folder / _MODEL_STATES
    if not main.is_file():
        per_rank = sorted(folder.glob("zero_pp_rank_*_model_states.pt"))
        if per_rank:  # ZeRO-3
            states = _load(per_rank[0])
            return SavedLayout(folder, int(states["dp_world_size"]), 3, shards, states)
        raise CheckpointError(f"{folder}: no {_MODEL_STATES}; is it a DeepSpeed checkpoint folder?")
    states = _load(main)
    world = int(states["dp_world_size"])
    stage = int(states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0)) if shards else 0
    if shards and [int(_SHARD.search(p.name).group(1)) for p in shards] != list(range(world)):
        raise CheckpointError(f"{folder}: written by {world} ranks but holds optimizer shards "
                              f"{[p.name for p in shards]}; the checkpoint is incomplete, resume from an earlier tag")
    return SavedLayout(folder, world, stage, shards, states)


def global_batch(layout: SavedLayout) -> int | None:
    """Samples per optimizer step of the run that wrote the checkpoint (None where its config is not saved)."""
    config = layout.model_states.get("ds_config") or {}
    if "train_micro_batch_size_per_gpu" not in config:
        return None
    return (int(config["train_micro_batch_size_per_gpu"]) * int(config.get("gradient_accumulation_steps", 1))
            * layout.world_size)


def needs_resharding(layout: SavedLayout, world_size: int) -> bool:
    """Whether the saved states must be re-partitioned to load on ``world_size`` ranks.

    Raises:
        CheckpointError: a ZeRO-3 checkpoint on another number of ranks.
    """
    if layout.world_size == world_size or layout.zero_stage == 0:
        return False
    if layout.zero_stage == 3:
        raise CheckpointError(
            f"{layout.folder}: a ZeRO-3 checkpoint written by {layout.world_size} ranks cannot be resumed on "
            f"{world_size} (DeepSpeed's universal checkpoint loads its states exactly, but training after that load "
            "departs from the uninterrupted run, so it is not offered; README, elastic resume); resume it on "
            f"{layout.world_size} ranks, or start a new run from its weights "
            f"(`foundation export {layout.folder.parent.parent}` consolidates them)")
    return True


def saved_states(layout: SavedLayout) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Every trainable parameter's full fp32 master and Adam moments, rebuilt from a ZeRO-1/2 checkpoint's shards.

    Yields:
        ``(name, {"fp32": [*shape], "exp_avg": [*shape], "exp_avg_sq": [*shape]})`` per parameter, named as in
        the trained module (``model.*``, ``objective.*``).
    """
    shards = [_load(p)["optimizer_state_dict"] for p in layout.shards]  # memory-mapped: nothing copied yet
    shapes = layout.model_states["param_shapes"]  # one {name: torch.Size} per optimizer group
    for group, group_shapes in enumerate(shapes):
        for name, shape in group_shapes.items():
            parts: dict[str, list[torch.Tensor]] = {"fp32": [], **{m: [] for m in MOMENTS}}
            for shard in shards:  # rank order: each rank holds one contiguous slice of the flattened parameter
                where = shard["param_slice_mappings"][group].get(name)
                if where is None:
                    continue
                flats = {"fp32": shard["single_partition_of_fp32_groups"][group],
                         **{m: shard["base_optimizer_state"]["state"][group][m] for m in MOMENTS}}
                for key, flat in flats.items():
                    parts[key].append(flat.narrow(0, where.start, where.numel))
            numel = torch.Size(shape).numel()
            if sum(p.numel() for p in parts["fp32"]) != numel:
                raise CheckpointError(f"{layout.folder}: the shards hold {sum(p.numel() for p in parts['fp32'])} "
                                      f"of the {numel} values of {name}; the checkpoint is damaged")
            yield name, {key: torch.cat(ps).view(shape).clone() for key, ps in parts.items()}


def saved_whole_states(layout: SavedLayout, engine: Any) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Every trainable parameter's saved weight and Adam moments from a ZeRO-0 checkpoint (whole states in
    ``mp_rank_00_model_states.pt``); the saved optimizer's parameter indices are named by ``engine``'s groups.

    Yields:
        ``(name, {"fp32", "exp_avg", "exp_avg_sq"})`` as :func:`saved_states` (moments only where the saved
        optimizer is torch's own format).
    """
    saved = layout.model_states
    names = {id(p): n for n, p in engine.module.named_parameters()}
    optimizer = saved.get("optimizer") or {}
    moments: dict[str, dict[str, torch.Tensor]] = {}
    if isinstance(optimizer.get("state"), dict) and "param_groups" in optimizer:
        for live, kept in zip(engine.optimizer.param_groups, optimizer["param_groups"]):
            for param, index in zip(live["params"], kept["params"]):
                state = optimizer["state"].get(index, {})
                moments[names[id(param)]] = {m: state[m] for m in MOMENTS if m in state}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            yield name, {"fp32": saved["module"][name].detach().float(),
                         **{m: t.float() for m, t in moments.get(name, {}).items()}}


def adam_steps(layout: SavedLayout) -> list[torch.Tensor]:
    """Adam's step count per optimizer group of a ZeRO-1/2 checkpoint (equal on every rank)."""
    state = _load(layout.shards[0])["optimizer_state_dict"]["base_optimizer_state"]["state"]
    return [state[g]["step"].clone() for g in sorted(state)]


def live_state(engine: Any, param: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    """A trainable parameter's full fp32 master and Adam moments in a running engine (a collective at ZeRO 1-3:
    call on every rank for the same parameters in the same order).

    Returns:
        ``{"fp32", "exp_avg", "exp_avg_sq"}``, full-shape CPU fp32 copies (moments absent before the first step
        at ZeRO 0).
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if engine.zero_optimization_stage() > 0:
        got = {"fp32": safe_get_full_fp32_param(param), **{m: safe_get_full_optimizer_state(param, m) for m in MOMENTS}}
    else:
        state = getattr(engine.optimizer, "state", {}).get(param, {})
        got = {"fp32": param, **{m: state[m] for m in MOMENTS if m in state}}
    return {k: v.detach().float().cpu().clone() for k, v in got.items() if v is not None}


def live_states(engine: Any) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """:func:`live_state` of every trainable parameter, in the module's order."""
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            yield name, live_state(engine, param)


def compare_states(expected: Iterator[tuple[str, dict[str, torch.Tensor]]], engine: Any) -> tuple[int, float, list[str]]:
    """Compare saved per-parameter states with ``engine``'s, one parameter at a time (every rank, same order).

    Returns:
        ``(tensors compared, largest absolute difference, problems in words)``.
    """
    n, worst, problems = 0, 0.0, []
    params = {name: p for name, p in engine.module.named_parameters() if p.requires_grad}
    for name, want in expected:
        param = params.pop(name, None)
        if param is None:
            problems.append(f"{name}: not a trainable parameter of the running model")
            continue
        have = live_state(engine, param)
        for key, tensor in want.items():
            if key not in have or have[key].shape != tensor.shape:
                problems.append(f"{name}.{key}: missing or of another shape")
                continue
            n += 1
            diff = (have[key] - tensor.detach()).abs()
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    problems += [f"{name}: not in the checkpoint" for name in params]
    return n, worst, problems


def load_resharded(engine: Any, layout: SavedLayout) -> dict[str, Any]:
    """Load a ZeRO-1/2 checkpoint written by another number of ranks into ``engine`` (on every rank).

    Returns:
        DeepSpeed's ``client_state`` of the checkpoint (what ``engine.load_checkpoint`` returns second).

    Raises:
        CheckpointError: the checkpoint's parameters do not match the model (names or shapes).
    """
    optimizer = engine.optimizer  # DeepSpeed's ZeRO-1/2 optimizer: this rank's flat fp32 partition per group
    base = optimizer.optimizer  # the torch optimizer over those partitions (its state is created lazily)
    steps = adam_steps(layout)
    for group, flat in enumerate(optimizer.single_partition_of_fp32_groups):
        base.state[flat] = {"step": steps[group].clone(), **{m: torch.zeros_like(flat) for m in MOMENTS}}
    params = dict(engine.module.named_parameters())
    for name, states in saved_states(layout):
        param = params.get(name)
        if param is None or tuple(param.shape) != tuple(states["fp32"].shape):
            found = "absent" if param is None else f"of shape {tuple(param.shape)}"
            raise CheckpointError(f"{layout.folder}: parameter {name} {tuple(states['fp32'].shape)} is {found} in "
                                  "the model; resume with the recipe the run was started with")
        with torch.no_grad():
            param.data.copy_(states["fp32"].to(param.dtype))  # the working (bf16 or fp32) copy, on every rank
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:  # no part of this parameter in this rank's partition
            continue
        piece = mapping.lp_fragment_address  # which elements of the flattened parameter this rank holds
        where = mapping.hp_fragment_address  # and where they sit in its flat partition
        flat = optimizer.single_partition_of_fp32_groups[mapping.param_group_index]
        targets = {"fp32": flat, **{m: base.state[flat][m] for m in MOMENTS}}
        with torch.no_grad():
            for key, target in targets.items():
                target.narrow(0, where.start, where.numel).copy_(
                    states[key].flatten().narrow(0, piece.start, piece.numel))
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # point each parameter's fragment at the moments just made (DeepSpeed does it at step 1)
        link()
    saved = layout.model_states
    buffers = {n: b for n, b in engine.module.named_buffers()}
    with torch.no_grad():
        for name in saved.get("buffer_names", []):
            if name in buffers:
                buffers[name].copy_(saved["module"][name])
    if engine.lr_scheduler is not None and saved.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    engine.global_steps = int(saved.get("global_steps", 0))
    engine.global_samples = int(saved.get("global_samples", 0))
    engine.skipped_steps = int(saved.get("skipped_steps", 0))
    ds_keys = {"module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
               "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
               "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size",
               "checkpoint_parallel_dimensions", "ds_config", "ds_version"}
    return {k: v for k, v in saved.items() if k not in ds_keys}
