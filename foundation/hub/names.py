"""File names of an exported folder: one set for models and adapters (peft's names for adapter folders)."""
from __future__ import annotations

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME", "ADAPTER_WEIGHTS_NAME", "ADAPTER_CONFIG_NAME", "HEAD_WEIGHTS_NAME"]

WEIGHTS_NAME = "model.safetensors"  # a whole model's weights (save_pretrained)
CONFIG_NAME = "config.json"  # the model config plus ``model_name``
CARD_NAME = "README.md"  # the model card
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's name for an adapter's weights
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's name for an adapter's config
HEAD_WEIGHTS_NAME = "head.safetensors"  # a fine-tune's new task head, beside its adapter
