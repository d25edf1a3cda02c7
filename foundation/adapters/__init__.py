"""Adapter library: LoRA (through peft) and Dopamine, with peft's adapter folder layout.

Each method is registered once below in the method table (name -> config
class, model class, ``peft_type``); :func:`load_adapter` reads ``peft_type``
from a folder and dispatches.
"""
from __future__ import annotations

import os

from torch import nn

from foundation.adapters.dopamine import DopamineConfig, DopamineModel
from foundation.adapters.state import gathered_state_dict
from foundation.hub.adapter_folder import download_adapter, push_adapter, read_adapter_config
from foundation.adapters.lora import LoraAdapterConfig, LoraAdapterModel
from foundation.adapters.methods import AdapterMethod, adapter_method_names, get_adapter_method, register_adapter_method
from foundation.adapters.targets import MODEL_PRESETS, TARGET_PRESETS, model_preset, resolve_targets

__all__ = [
    "LoraAdapterConfig",
    "LoraAdapterModel",
    "DopamineConfig",
    "DopamineModel",
    "TARGET_PRESETS",
    "MODEL_PRESETS",
    "model_preset",
    "resolve_targets",
    "AdapterMethod",
    "register_adapter_method",
    "get_adapter_method",
    "adapter_method_names",
    "gathered_state_dict",
    "read_adapter_config",
    "push_adapter",
    "download_adapter",
    "load_adapter",
]

register_adapter_method("lora", LoraAdapterConfig, LoraAdapterModel, peft_type="LORA")
register_adapter_method("dopamine", DopamineConfig, DopamineModel, peft_type="DOPAMINE")


def load_adapter(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False) -> nn.Module:
    """Wrap ``model`` with the adapter saved in ``folder``, whichever method wrote it.

    Raises:
        CheckpointError: the folder is not an adapter folder or does not match ``model``.
        ConfigError: its ``peft_type`` names no registered method.
    """
    cfg = read_adapter_config(folder)
    method = get_adapter_method(cfg["peft_type"], where=f"{folder}/adapter_config.json, key peft_type")
    return method.model_cls.from_adapter(model, folder, adapter_name, is_trainable=is_trainable)
