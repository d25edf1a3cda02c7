"""``foundation.load``: any folder or Hub repository the suite wrote, back as the right model, from ``config.json``.

    import foundation

    encoder = foundation.load("my-org/deeperbrain-tiny")           # a pretrained encoder (its registered class)
    model = foundation.load("runs/eeg-task/lora-20261129-2300/adapter")  # a fine-tune: encoder + adapter + head
    task_model = foundation.load("my-org/eeg-task-lora", adapter=False)  # the same without the adapter (for peft)

A folder's ``config.json`` names its class (``model_name``): a registered model (``deeperbrain``,
``slim-brain``, ``ultrasound-mtl``, ...) loads with its own ``from_pretrained``; ``task-model`` is a
fine-tune (:class:`~foundation.finetune.task_model.TaskModel`). A fine-tune folder that holds an
``adapter_config.json`` has no encoder weights of its own: its config names the base (Hub id and commit,
or a local folder), which loads strictly into the encoder before the adapter (and the head inside it) is put on.

Checkpoints the suite did not write go through an importer of :data:`foundation.registry.IMPORTERS`
(``eeg-published``: LaBraM, CBraMod, EEGPT, BIOT and BENDR release files and braindecode folders); ``arch:NAME``
builds an architecture at random init, either an importer's (``arch:labram``) or a suite recipe's encoder
(``arch:deeperbrain-tiny``)::

    encoder = foundation.load("labram-base.pth")                         # a release file, strict, key report
    encoder = foundation.load("encoder.pt", arch="bendr")                 # when the file cannot tell
    encoder = foundation.load("arch:cbramod")                             # random init, labelled so

Layer: beside ``finetune`` (it builds task models); models are looked up through the registry, never by
importing a modality.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from foundation.errors import CheckpointError
from foundation.hub.client import download_folder
from foundation.hub.names import ADAPTER_CONFIG_NAME, CONFIG_NAME, HEAD_WEIGHTS_NAME
from foundation.registry import MODELS

__all__ = ["load", "resolve_folder"]

def resolve_folder(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as it is, else the Hub repository's snapshot (downloaded, ``HF_ENDPOINT`` honoured).

    Raises:
        CheckpointError: ``source`` is a file, or a path-like name (``./x``, ``/x``, ``x/y/z``) that does not exist.
        HubError: the Hub cannot serve the repository or revision.
    """
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file():
        raise CheckpointError(f"{source}: is a file; give the folder that holds {CONFIG_NAME}")
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise CheckpointError(f"{source}: no such folder (and not a Hub id 'owner/name'); check the path")
    return download_folder(text, revision)


def _read_config(folder: Path, source: str) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{source}: no {CONFIG_NAME}; not a folder written by foundation-suite (save_pretrained, "
                              f"foundation export or foundation finetune)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err}); re-export the model") from err
    if not isinstance(data, dict) or "model_name" not in data:
        raise CheckpointError(f"{file}: no 'model_name' key; not written by foundation-suite")
    return data


def _task_model_without_adapter(folder: Path, data: dict[str, Any], source: str) -> nn.Module:
    from foundation.config import dataclass_from_dict
    from foundation.finetune.task_model import TaskModel, TaskModelConfig

    fields = {k: v for k, v in data.items() if k not in ("model_name", "foundation_version")}
    cfg = dataclass_from_dict(TaskModelConfig, fields, where=f"{source}/{CONFIG_NAME}")
    if not cfg.base_model:
        raise CheckpointError(f"{source}/{CONFIG_NAME}: key base_model is empty, so the encoder's weights cannot be "
                              f"found; re-run the fine-tune from a saved checkpoint or Hub id")
    model = TaskModel(cfg)
    enc_cls = MODELS.get(cfg.encoder, where=f"{source}/{CONFIG_NAME}, key encoder")
    base = enc_cls.from_pretrained(cfg.base_model, revision=cfg.base_revision or None)
    model.encoder.load_state_dict(base.state_dict(), strict=True)
    head = folder / HEAD_WEIGHTS_NAME
    if head.is_file():
        from safetensors.torch import load_file

        model.head.load_state_dict(load_file(str(head)), strict=True)
    return model


def load(source: str | os.PathLike, revision: str | None = None, *, adapter: bool = True, arch: str | None = None,
         exclude_keys: tuple[str, ...] = ()) -> nn.Module:
    """The model saved in a folder or Hub repository, as the class its ``config.json`` names, in eval mode.

    Args:
        source: a local folder or a Hub id ``owner/name``.
        revision: Hub branch, tag or commit.
        adapter: for an adapter fine-tune: put the adapter on (default); False returns the task model (pretrained
            encoder, head untrained where the head is saved inside the adapter), e.g. for
            ``peft.PeftModel.from_pretrained(foundation.load(dir, adapter=False), dir)``.
        arch: for a published checkpoint whose file cannot tell it: the architecture (``labram`` ...).
        exclude_keys: for a published checkpoint: keys (or prefixes) to leave out of the strict load.

    Returns:
        A registered model (pretrained encoder), a :class:`~foundation.finetune.task_model.TaskModel` (full
        fine-tune), or an :class:`~foundation.adapters.base.AdapterModel` around a task model (adapter fine-tune).

    Raises:
        CheckpointError: no folder or config, an unknown ``model_name``, or weights that do not match.
        HubError: the Hub cannot serve ``source``.
    """
    from foundation.finetune.bases import ARCH_PREFIX, importer_for, load_base

    if str(source).startswith(ARCH_PREFIX) or Path(source).is_file():
        return load_base(str(source), revision, arch=arch, exclude=tuple(exclude_keys))[0].eval()
    folder = resolve_folder(source, revision)
    if importer_for(source, folder) is not None:
        return load_base(str(source), revision, arch=arch, exclude=tuple(exclude_keys), folder=folder)[0].eval()
    data = _read_config(folder, str(source))
    name = data["model_name"]
    if (folder / ADAPTER_CONFIG_NAME).is_file():
        if name != "task-model":
            raise CheckpointError(f"{source}: holds {ADAPTER_CONFIG_NAME} but {CONFIG_NAME} names {name!r}; an adapter "
                                  f"fine-tune's config names 'task-model'")
        model = _task_model_without_adapter(folder, data, str(source))
        if adapter:
            from foundation.adapters import load_adapter

            model = load_adapter(model, folder)
        return model.eval()
    if name == "task-model":
        from foundation.finetune.task_model import TaskModel

        return TaskModel.from_pretrained(folder).eval()
    from foundation.errors import ConfigError

    try:
        cls = MODELS.get(name, where=f"{source}/{CONFIG_NAME}, key model_name")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    return cls.from_pretrained(folder).eval()


def task_model_of(model: nn.Module) -> Any:
    """The :class:`~foundation.finetune.task_model.TaskModel` inside ``model`` (itself, or under an adapter), or None."""
    from foundation.finetune.task_model import TaskModel

    return next((m for m in model.modules() if isinstance(m, TaskModel)), None)


def predict_dataset(model: nn.Module, dataset: Any, batch_size: int = 64) -> tuple[Any, list[dict[str, Any]], Any]:
    """Run a fine-tuned model over every item of a data set the suite reads.

    Args:
        model: what :func:`load` returned for a fine-tune (a task model, or an adapter around one).
        dataset: a built data set (dict items with the encoder's inputs; ``label`` and ``groups()`` when present).
        batch_size: items per forward pass.

    Returns:
        ``(out, rows, task_config)``: probabilities ``[S, C]`` (classification) or values; one row per item
        (``index``, ``subject``, ``source`` file, ``label`` where known); the task model's config (class names,
        task, preprocessing).

    Raises:
        CheckpointError: ``model`` holds no task head (a pretrained encoder: fine-tune it first).
    """
    import torch
    from torch.utils.data import DataLoader

    from foundation.data.protocol import item_rows
    from foundation.finetune.features import split_batch

    task_model = task_model_of(model)
    if task_model is None:
        raise CheckpointError(f"{type(model).__name__} is a pretrained encoder without a task head; predictions need "
                              f"a fine-tune (foundation finetune --from ... --method ...)")
    cfg = task_model.config
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=getattr(dataset, "collate", None))
    model.eval()
    outs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            has_label = isinstance(batch, dict) and "label" in batch
            x, y = split_batch(batch) if has_label else (batch, None)
            outs.append(model(x).float())
            labels.append(None if y is None else torch.as_tensor(y))
    out = torch.cat(outs)
    out = out.softmax(-1) if cfg.task == "classification" else out
    names = list(cfg.class_names) or [str(c) for c in range(cfg.num_outputs)]
    ys = [v for y in labels if y is not None for v in y]
    rows = item_rows(dataset, range(len(out)))
    if len(ys) == len(out):
        for row, y in zip(rows, ys):
            row["label"] = names[int(y)] if cfg.task == "classification" else float(y)
    return out, rows, cfg
