"""Adapter folders on the Hub: read, push and fetch peft-layout folders.

An adapter folder has peft's layout: ``adapter_config.json`` (with a ``peft_type`` naming the method) and
``adapter_model.safetensors`` holding only the adapter's tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from foundation.errors import CheckpointError, HubError
from foundation.hub.client import download_folder, push_folder
from foundation.hub.names import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

__all__ = ["read_adapter_config", "push_adapter", "download_adapter"]


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``adapter_config.json`` of an adapter folder.

    Raises:
        CheckpointError: the folder, the file or its ``peft_type`` is missing, or the JSON is corrupt.
    """
    path = Path(folder) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"adapter folder {str(folder)!r}: {ADAPTER_CONFIG_NAME} not found; expected an adapter saved "
                              f"by AdapterModel.save (files {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON in UTF-8 ({err}); re-save the adapter") from err
    if not isinstance(data, dict) or "peft_type" not in data:
        raise CheckpointError(f"{path}: no 'peft_type' field; expected e.g. 'LORA' or 'DOPAMINE'")
    if not (Path(folder) / ADAPTER_WEIGHTS_NAME).is_file():
        raise CheckpointError(f"adapter folder {str(folder)!r}: {ADAPTER_WEIGHTS_NAME} not found next to {ADAPTER_CONFIG_NAME}")
    return data


def push_adapter(folder: str | os.PathLike, repo_id: str, private: bool = False,
                 commit_message: str | None = None) -> str:
    """Push a saved adapter folder to the Hub through :func:`foundation.hub.client.push_folder`.

    Args:
        folder: a folder written by ``AdapterModel.save`` (checked before any network call).
        repo_id: "user/name".
        private: create the repository private.
        commit_message: defaults to "Upload <peft_type> adapter".

    Returns:
        The commit sha returned by ``push_folder``.
    """
    cfg = read_adapter_config(folder)
    message = commit_message or f"Upload {cfg['peft_type']} adapter"
    return push_folder(folder, repo_id, private=private, commit_message=message)


def download_adapter(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) from the Hub.

    Uses :func:`foundation.hub.client.download_folder` (``HF_ENDPOINT`` is honoured).

    Raises:
        ConfigError: ``repo_id`` is malformed.
        HubError: the endpoint refused, or the repository holds no adapter.
    """
    path = download_folder(repo_id, revision=revision, cache_dir=cache_dir,
                           allow_patterns=[ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME])
    if not (path / ADAPTER_CONFIG_NAME).is_file() or not (path / ADAPTER_WEIGHTS_NAME).is_file():
        raise HubError(f"Hub repo {repo_id!r} holds no {ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME}; it is not an adapter "
                       f"repository (push one with push_adapter)")
    return path
