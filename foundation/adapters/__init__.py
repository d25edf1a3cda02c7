"""Adapter library: one base class (:class:`AdapterModel`), LoRA (through peft) and Dopamine, peft's folder layout.

Each method is one :class:`AdapterModel` subclass, registered once below by name
(:func:`register_adapter`); :func:`load_adapter` reads ``peft_type`` from a folder and dispatches.
A new method is added by subclassing :class:`AdapterModel` and registering the class.
"""
from __future__ import annotations

import os

from torch import nn

from foundation.adapters.base import AdapterModel, AdapterReportContext
from foundation.adapters.dopamine import DopamineConfig, DopamineModel
from foundation.adapters.lora import LoraAdapterConfig, LoraAdapterModel
from foundation.adapters.methods import adapter_names, get_adapter, register_adapter
from foundation.adapters.state import gathered_state_dict
from foundation.adapters.targets import MODEL_PRESETS, TARGET_PRESETS, model_preset, resolve_targets
from foundation.hub.adapter_folder import download_adapter, push_adapter, read_adapter_config

__all__ = [
    "AdapterModel",
    "AdapterReportContext",
    "LoraAdapterConfig",
    "LoraAdapterModel",
    "DopamineConfig",
    "DopamineModel",
    "TARGET_PRESETS",
    "MODEL_PRESETS",
    "model_preset",
    "resolve_targets",
    "register_adapter",
    "get_adapter",
    "adapter_names",
    "gathered_state_dict",
    "read_adapter_config",
    "push_adapter",
    "download_adapter",
    "load_adapter",
]

register_adapter(LoraAdapterModel)
register_adapter(DopamineModel)


def load_adapter(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False) -> AdapterModel:
    """Wrap ``model`` with the adapter saved in ``folder``, whichever registered method wrote it.

    Raises:
        CheckpointError: the folder is not an adapter folder or does not match ``model``.
        ConfigError: its ``peft_type`` names no registered method.
    """
    cfg = read_adapter_config(folder)
    cls = get_adapter(cfg["peft_type"], where=f"{folder}/adapter_config.json, key peft_type")
    return cls.load(model, folder, adapter_name, is_trainable=is_trainable)
