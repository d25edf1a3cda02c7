"""Turn a run's final checkpoint into a ``save_pretrained`` folder with a model card."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from foundation.config import RecipeConfig, load_recipe
from foundation.errors import CheckpointError
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.components import TrainModule, build_model, build_objective
from foundation.pretrain.result import RunResult

__all__ = ["consolidate_fp32", "export_checkpoint", "export_run", "export_from_run_dir"]


def consolidate_fp32(ckpt_root: str | Path, tag: str, recipe: RecipeConfig) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of the trained module from a DeepSpeed checkpoint.

    ZeRO 1-3 runs keep fp32 master weights sharded in the optimizer states;
    DeepSpeed's ``zero_to_fp32`` gathers them (all shards must be on this file
    system). A stage-0 fp32 run stores whole weights in its model states; a
    stage-0 bf16 run keeps its fp32 masters in the optimizer's ``fp32_groups``,
    ordered like the optimizer groups, which are rebuilt from the recipe to name them.

    Returns:
        ``{name: fp32 tensor}`` with the trained module's keys (``model.*``, ``objective.*``).

    Raises:
        CheckpointError: the folder is missing, incomplete, not a DeepSpeed checkpoint, or holds a state file
            that is unsafe to unpickle (see :meth:`CheckpointDir.verify`).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = CheckpointDir(ckpt_root).verify(tag)
    if any(folder.glob("*optim_states.pt")):
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)
        return {k: v.float().contiguous() for k, v in state.items()}
    model_states = folder / "mp_rank_00_model_states.pt"
    if not model_states.is_file():
        raise CheckpointError(f"{folder} holds neither ZeRO optimizer shards nor {model_states.name}; "
                              "is it a DeepSpeed checkpoint folder?")
    saved = torch.load(model_states, map_location="cpu", weights_only=True)
    state = {k: v.float().contiguous() for k, v in saved["module"].items()}
    masters = (saved.get("optimizer") or {}).get("fp32_groups")
    if masters is not None:
        state.update(_name_masters(masters, recipe, folder))
    return state


def _name_masters(masters: list[list[torch.Tensor]], recipe: RecipeConfig, folder: Path) -> dict[str, torch.Tensor]:
    from foundation.pretrain.optim import merge_groups, param_groups

    module = TrainModule(build_model(recipe), build_objective(recipe))  # no data needed to name parameters
    names = {id(p): n for n, p in module.named_parameters()}
    unmerged = param_groups(module, recipe.train)
    sizes = [len(m) for m in masters]
    # the optimizer merges groups of equal hyper-parameters; checkpoints written before it did hold them apart
    groups = next((gs for gs in (merge_groups(unmerged), unmerged) if [len(g["params"]) for g in gs] == sizes), None)
    if groups is None:
        raise CheckpointError(f"{folder}: optimizer groups {sizes} do not match the recipe's "
                              f"{[len(g['params']) for g in merge_groups(unmerged)]}; export with the recipe the "
                              "run used")
    return {names[id(p)]: m.float().contiguous() for g, ms in zip(groups, masters) for p, m in zip(g["params"], ms)}


def export_checkpoint(recipe: RecipeConfig, ckpt_root: str | Path, tag: str, out_dir: str | Path,
                      training_losses: dict[str, float] | None = None, data: str = "",
                      card_extra: dict[str, Any] | None = None, preprocessing: dict[str, Any] | None = None) -> Path:
    """Consolidate checkpoint ``tag`` and write ``out_dir`` (model.safetensors, config.json, README.md).

    The model is rebuilt from the recipe and loaded strictly, so a checkpoint of
    another architecture fails here rather than on a user's machine.
    """
    from foundation.hub import ModelCardInfo

    state = consolidate_fp32(ckpt_root, tag, recipe)
    model_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model = build_model(recipe)
    result = model.load_state_dict(model_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{Path(ckpt_root) / tag} does not match model {recipe.model.name!r}: missing keys "
            f"{result.missing_keys}, unexpected keys {result.unexpected_keys}; export with the recipe it was trained with"
        )
    extra = dict(card_extra or {})
    info = ModelCardInfo(
        tags=tuple(extra.pop("tags", ())),
        training_losses=dict(training_losses or {}),  # last-step training values, not held-out metrics
        recipe_yaml=recipe.to_yaml(),
        data_summary=data,
        preprocessing=dict(preprocessing or {}),
        **extra,
    )
    model.save_pretrained(out_dir, card=info)
    return Path(out_dir)


def export_run(recipe: RecipeConfig, result: RunResult, card_extra: dict[str, Any] | None = None) -> Path:
    """Export the newest checkpoint of a finished run to ``<output_dir>/export`` (call on one rank).

    Args:
        recipe: the recipe the run trained.
        result: what ``Engine.run()`` returned (run folder, last metrics, data summary for the card).
        card_extra: extra model-card fields (e.g. ``base_model``, ``tags``).

    Raises:
        CheckpointError: the run left no complete checkpoint, or it does not fit the recipe's model.
    """
    ckpts = CheckpointDir(result.output_dir / "checkpoints")
    tag = ckpts.latest()
    if tag is None:
        raise CheckpointError(f"no checkpoint under {ckpts.root} to export")
    return export_checkpoint(recipe, ckpts.root, tag, result.output_dir / "export", result.metrics,
                             result.data_summary, card_extra, result.preprocessing)


def export_from_run_dir(run_dir: str | Path, out_dir: str | Path | None = None, tag: str | None = None) -> Path:
    """Export a run folder's checkpoint (``latest`` by default) using the recipe saved beside it."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise CheckpointError(f"{run_dir} has no recipe.yaml; is it a run folder written by `foundation pretrain`?")
    recipe = load_recipe(str(recipe_path))
    ckpts = CheckpointDir(run_dir / "checkpoints")
    tag = tag or ckpts.latest()
    if tag is None:
        raise CheckpointError(f"{ckpts.root} holds no complete checkpoint to export")
    record = run_dir / "provenance.json"
    try:
        extra = {"provenance": json.loads(record.read_text())} if record.is_file() else None
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{record}: not readable JSON ({err}); remove it or restore it from a backup") from err
    return export_checkpoint(recipe, ckpts.root, tag, out_dir or run_dir / "export", card_extra=extra)
