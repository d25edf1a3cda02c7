"""Hugging Face Hub: the model mixin, the client (push, download), model cards, weight files, adapter folders.

Modules: ``mixin`` (``HubMixin``: save_pretrained / from_pretrained / push_to_hub), ``client`` (push_folder,
download_folder, one HubError for every failure), ``card`` (model cards), ``weights`` (strict safetensors
loading, tied weights), ``adapter_folder`` (peft-layout adapter folders), ``names`` (the file names).
"""
from __future__ import annotations

from foundation.hub.adapter_folder import download_adapter, push_adapter, read_adapter_config
from foundation.hub.card import LIBRARY_NAME, ModelCardInfo, write_model_card
from foundation.hub.client import download_folder, hub_endpoint, push_folder
from foundation.hub.mixin import HubMixin
from foundation.hub.names import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CARD_NAME,
    CONFIG_NAME,
    HEAD_WEIGHTS_NAME,
    WEIGHTS_NAME,
)

__all__ = [
    "HubMixin",
    "ModelCardInfo",
    "write_model_card",
    "LIBRARY_NAME",
    "push_folder",
    "download_folder",
    "hub_endpoint",
    "read_adapter_config",
    "push_adapter",
    "download_adapter",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CARD_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "ADAPTER_CONFIG_NAME",
    "HEAD_WEIGHTS_NAME",
]
