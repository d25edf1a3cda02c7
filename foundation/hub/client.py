"""Hugging Face Hub client: push and download folders, one error type for every failure.

Every network or HTTP failure becomes a :class:`~foundation.errors.HubError` naming the endpoint and repo.
The endpoint is ``endpoint=`` when given, else ``HF_ENDPOINT`` as set when the call is made (huggingface_hub
itself reads it once, at import), else https://huggingface.co.

Note: like ``huggingface_hub.snapshot_download``, a download with the Hub unreachable returns the cached
snapshot when one exists for that revision; pass ``local_files_only=True`` to stay offline on purpose.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from foundation.errors import CheckpointError, ConfigError, HubError
from foundation.hub.card import LIBRARY_NAME, check_card_front_matter
from foundation.hub.names import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

__all__ = ["push_folder", "download_folder", "hub_endpoint", "check_repo_id"]


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub base URL in use: ``endpoint`` if given, else ``HF_ENDPOINT`` now, else huggingface_hub's default."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _scrub(text: str, token: str | None) -> str:
    """Remove tokens from a message: the one in use and anything shaped like a Hub token."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


@contextmanager
def _hub_errors(action: str, repo_id: str, endpoint: str, revision: str | None, token: str | None) -> Iterator[None]:
    """Turn every client failure inside the block into a HubError naming the endpoint and repo."""
    where = f"{action} {repo_id!r}" + (f" at revision {revision!r}" if revision else "") + f" on {endpoint}"
    try:
        yield
    except RevisionNotFoundError as err:
        raise HubError(f"{where}: revision not found; give an existing branch name or full commit sha "
                       f"(server said: {_scrub(str(err), token).splitlines()[0]})") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"{where}: repository not found (or private and the token has no access); check the repo "
                       "id, HF_ENDPOINT and your token (HF_TOKEN or `hf auth login`)") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise HubError(f"{where}: HTTP {status}: {_scrub(str(err), token).splitlines()[0]}; check the repo id, "
                       "your token's write access and HF_ENDPOINT") from err
    except OfflineModeIsEnabled as err:
        raise HubError(f"{where}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to go online") from err
    except LocalEntryNotFoundError as err:
        if isinstance(err.__cause__, OfflineModeIsEnabled):
            raise HubError(f"{where}: HF_HUB_OFFLINE is set and nothing is cached; unset it to go online") from err
        if err.__cause__ is None:  # local_files_only and nothing cached
            raise HubError(f"{where}: not in the local cache; download it once online (without local_files_only "
                           "or HF_HUB_OFFLINE)") from err
        raise HubError(f"{where}: cannot reach the Hub and nothing is cached ({_cause(err.__cause__, token)}); "
                       "check HF_ENDPOINT, the network and proxy settings, then retry") from err
    except (httpx2.HTTPError, ConnectionError, TimeoutError) as err:
        raise HubError(f"{where}: cannot reach the Hub ({_cause(err, token)}); check HF_ENDPOINT, the network "
                       "and proxy settings, then retry") from err


def _cause(err: BaseException, token: str | None) -> str:
    """``"ConnectError: [Errno 111] Connection refused"``: the error's type and first line, token removed."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {_scrub(lines[0] if lines else '', token)}"


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"repo id {repo_id!r} is not valid: {err}; write it as 'owner/name'") from err


def _check_pushable(folder: Path) -> None:
    """A pushable folder exists and holds config.json plus model or adapter weights."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder; export the model with save_pretrained(folder) first")
    names = {p.name for p in folder.iterdir()}
    has_weights = WEIGHTS_NAME in names or ADAPTER_WEIGHTS_NAME in names
    has_config = CONFIG_NAME in names or (ADAPTER_WEIGHTS_NAME in names and ADAPTER_CONFIG_NAME in names)
    if not (has_weights and has_config):
        raise CheckpointError(
            f"{folder}: not an exported model; expected {CONFIG_NAME} plus {WEIGHTS_NAME} or "
            f"{ADAPTER_WEIGHTS_NAME}, found {sorted(names) or 'nothing'}; export with save_pretrained(folder)"
        )
    if CARD_NAME in names:  # the Hub rejects a card whose front matter is not a YAML mapping
        check_card_front_matter(folder / CARD_NAME)


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, commit_message: str | None = None,
                revision: str | None = None, token: str | None = None, endpoint: str | None = None) -> str:
    """Upload an exported folder to the Hub in one commit; return the commit sha.

    The folder is checked first (it must hold config.json plus model.safetensors or
    adapter_model.safetensors); the repo is created when missing; a ``revision`` other than main is
    created as a branch when missing. The local folder is only read.

    Raises:
        CheckpointError: the folder is missing or is not an export.
        ConfigError: ``repo_id`` is malformed.
        HubError: the Hub is unreachable or refuses; also when ``private=True`` but the repo exists and is public.
    """
    folder = Path(folder)
    _check_pushable(folder)
    check_repo_id(repo_id)
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors("push to", repo_id, endpoint, revision, token):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id).private:
            raise HubError(f"push to {repo_id!r} on {endpoint}: the repo exists and is public but private=True was "
                           "asked; make it private on the Hub first, or push with private=False")
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name} with {LIBRARY_NAME}")
    return info.oid


def download_folder(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None, *,
                    allow_patterns: list[str] | None = None, token: str | None = None,
                    local_files_only: bool = False, endpoint: str | None = None) -> Path:
    """Download a repo snapshot (all files, or those matching ``allow_patterns``) into the cache.

    Returns:
        The snapshot folder ``<cache>/models--owner--name/snapshots/<sha>``.

    Raises:
        ConfigError: ``repo_id`` is malformed.
        HubError: the Hub is unreachable (and nothing is cached), the repo or revision does not exist.
    """
    check_repo_id(repo_id)
    endpoint = hub_endpoint(endpoint)
    action = "download from the local cache" if local_files_only else "download"
    with _hub_errors(action, repo_id, endpoint, revision, token):
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns,
                                 token=token, local_files_only=local_files_only, endpoint=endpoint)
    return Path(path)


