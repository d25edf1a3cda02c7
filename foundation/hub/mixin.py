"""Hugging Face Hub integration: every model saves, loads and pushes itself the same way.

``HubMixin`` builds on :class:`huggingface_hub.PyTorchModelHubMixin` (its class-level card metadata:
``library_name="foundation-suite"`` and tags) and replaces its save/load with stricter versions:

* ``save_pretrained(dir)`` writes ``model.safetensors``, ``config.json`` (the config dataclass plus
  ``model_name``) and a ``README.md`` model card into a temporary sibling folder, then renames it over
  ``dir``: an existing export is replaced only once the new one is complete.
* ``from_pretrained(repo_id_or_dir, revision=...)`` refuses a folder of another model and loads strictly:
  a :class:`~foundation.errors.CheckpointError` lists missing and unexpected keys and shape or dtype
  mismatches. Tied weights are stored once (like ``safetensors.torch.save_model``) and restored by alias.
* ``push_to_hub(repo_id)`` exports to a temporary folder and uploads it with
  :func:`foundation.hub.client.push_folder`.

Usage::

    @dataclass
    class TinyConfig:
        dim: int = 8

    class Tiny(nn.Module, HubMixin, tags=["eeg"]):
        model_name = "tiny"
        config_class = TinyConfig

        def __init__(self, config: TinyConfig) -> None:
            super().__init__()
            self.config = config
            self.proj = nn.Linear(config.dim, config.dim)
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import save_file

import foundation
from foundation.atomic import replace_folder
from foundation.config_schema import dataclass_from_dict, dataclass_to_dict
from foundation.errors import CheckpointError, ConfigError, FoundationError, HubError
from foundation.hub.card import LIBRARY_NAME, ModelCardInfo, write_model_card
from foundation.hub.client import check_repo_id, download_folder, hub_endpoint, push_folder
from foundation.hub.names import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from foundation.hub.weights import listed, load_weights, weights_for_saving

__all__ = ["HubMixin"]
NOTE_KEYS = ("preprocessing", "provenance")  # written beside an export's config fields from its ModelCardInfo

_RESERVED_KEYS = ("model_name", "foundation_version")  # keys config.json adds to the config's fields
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
M = TypeVar("M", bound="HubMixin")


class HubMixin(PyTorchModelHubMixin, library_name=LIBRARY_NAME, tags=[LIBRARY_NAME]):
    """Save / load / push for a model built as ``Model(config)``.

    A concrete model sets two class attributes: ``model_name`` (its registry name, written to
    config.json so a loader refuses another model's folder) and ``config_class`` (the config dataclass).
    Class keyword arguments (``tags=[...]``, ``license=...``, ``paper_url=...``) go to the Hub mixin.
    """

    model_name: ClassVar[str]
    config_class: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name, config_class = getattr(cls, "model_name", None), getattr(cls, "config_class", None)
        if name is not None and not (isinstance(name, str) and _MODEL_NAME.match(name)):
            raise TypeError(f"{cls.__name__}.model_name must be a lower-case, hyphen-joined name, got {name!r}")
        if config_class is not None:
            if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
                raise TypeError(f"{cls.__name__}.config_class must be a dataclass type, got {config_class!r}")
            clash = [f.name for f in dataclasses.fields(config_class) if f.name in _RESERVED_KEYS]
            if clash:
                raise TypeError(f"{config_class.__name__} fields {clash} clash with config.json keys {_RESERVED_KEYS}")

    @classmethod
    def _hub_spec(cls) -> tuple[str, type]:
        name, config_class = getattr(cls, "model_name", None), getattr(cls, "config_class", None)
        if name is None or config_class is None:
            raise TypeError(f"{cls.__name__} must set the class attributes model_name and config_class to use the Hub")
        return name, config_class

    def hub_config(self) -> Any:
        """The config dataclass this model was built with (``Model(config)``)."""
        _, config_class = self._hub_spec()
        config = self._hub_mixin_config
        if not isinstance(config, config_class):
            raise TypeError(f"{type(self).__name__} was not built as {type(self).__name__}(config) with a "
                            f"{config_class.__name__}; got {type(config).__name__}")
        return config

    def save_pretrained(self, save_directory: str | Path, *, card: ModelCardInfo | None = None) -> Path:
        """Export to ``save_directory``: model.safetensors, config.json and a README.md model card.

        The files are written to a temporary sibling folder which then replaces ``save_directory``; an
        existing export is left untouched if anything fails. A folder holding other files is refused
        rather than deleted.

        Returns:
            The folder written.

        Raises:
            CheckpointError: ``save_directory`` is a file, or a folder holding files other than an export.
        """
        folder = Path(save_directory)
        name, _ = self._hub_spec()
        config = self.hub_config()
        if folder.exists():
            if not folder.is_dir():
                raise CheckpointError(f"{folder}: is a file; save_pretrained needs a folder path")
            others = sorted(p.name for p in folder.iterdir() if p.name not in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME))
            if others:
                raise CheckpointError(f"{folder}: holds other files ({listed(others)}) that replacing the export "
                                      "would delete; save into an empty or new folder")
        weights, aliases = weights_for_saving(self)
        config_json = {"model_name": name, "foundation_version": foundation.__version__, **dataclass_to_dict(config)}
        for key in NOTE_KEYS:  # an export's notes; a task model keeps them as config fields of its own
            if card is not None and getattr(card, key) and key not in config_json:
                config_json[key] = getattr(card, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "aliases": json.dumps(aliases)})
            (tmp / CONFIG_NAME).write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            write_model_card(tmp, self._card_info(card), name, config, class_name=type(self).__name__)
            replace_folder(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return folder

    def _card_info(self, card: ModelCardInfo | None) -> ModelCardInfo:
        """``card`` plus the class-level tags and license given to the Hub mixin."""
        card = card or ModelCardInfo()
        data = self._hub_mixin_info.model_card_data
        tags = tuple(dict.fromkeys([*(data.tags or []), *card.tags]))
        return dataclasses.replace(card, tags=tags, license=card.license or data.license)

    @classmethod
    def from_pretrained(cls: type[M], repo_id_or_dir: str | Path, revision: str | None = None,
                        cache_dir: str | Path | None = None, *, token: str | None = None,
                        local_files_only: bool = False, map_location: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, endpoint: str | None = None) -> M:
        """Build the model from an export folder or a Hub repo and load its weights strictly.

        Args:
            repo_id_or_dir: an existing folder, or a Hub repo id ``owner/name``.
            revision: branch name or commit sha (Hub only); None means main.
            cache_dir: Hub cache folder; None uses ``HF_HUB_CACHE``.
            token: Hub token; None uses ``HF_TOKEN`` or the stored login.
            local_files_only: use the Hub cache only, never the network.
            map_location: device the weights load onto.
            dtype: cast the model to this dtype before loading (the checkpoint must hold it).
            endpoint: Hub URL; None uses ``HF_ENDPOINT``.

        Returns:
            The model in eval mode.

        Raises:
            CheckpointError: another model's folder, a bad config.json, missing/unexpected/mismatched keys.
            HubError: the Hub is unreachable, or the repo or revision does not exist.
        """
        name, config_class = cls._hub_spec()
        path = Path(repo_id_or_dir)
        if path.is_dir():
            if revision is not None:
                raise ConfigError(f"{path}: revision={revision!r} applies to Hub repos only, and this is a local "
                                  "folder; drop revision or give a repo id")
            folder, source = path, str(path)
        elif path.exists():
            raise CheckpointError(f"{path}: is a file; give the export folder (holding {CONFIG_NAME} and {WEIGHTS_NAME})")
        else:
            repo_id = str(repo_id_or_dir)
            try:
                validate_repo_id(repo_id)
            except HFValidationError as err:
                raise CheckpointError(f"{repo_id!r}: no such folder, and not a Hub repo id ('owner/name')") from err
            try:
                folder = download_folder(repo_id, revision, cache_dir, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                                         token=token, local_files_only=local_files_only, endpoint=endpoint)
            except HubError as err:
                if isinstance(err.__cause__, RepositoryNotFoundError):
                    raise HubError(f"{err}; if {repo_id!r} was meant as a local folder: {path.resolve()} does not "
                                   "exist") from err.__cause__
                raise
            source = f"Hub repo {repo_id}@{folder.name} ({hub_endpoint(endpoint)})"
        config = _read_config(folder / CONFIG_NAME, source, name, config_class)
        try:
            model = cls(config)
        except FoundationError:
            raise
        except Exception as err:  # config.json is input: values the model cannot be built with
            raise CheckpointError(f"{source}: {CONFIG_NAME} describes a {name!r} model that cannot be built "
                                  f"({type(err).__name__}: {err}); the file is damaged or from another version, "
                                  "re-export the model") from err
        if dtype is not None:
            model.to(dtype)
        load_weights(model, folder / WEIGHTS_NAME, source, map_location)
        model.eval()
        return model

    def push_to_hub(self, repo_id: str, *, private: bool = False, commit_message: str | None = None,
                    revision: str | None = None, card: ModelCardInfo | None = None, token: str | None = None,
                    endpoint: str | None = None) -> str:
        """Export to a temporary folder and push it (see :func:`push_folder`); return the commit sha."""
        check_repo_id(repo_id)
        with tempfile.TemporaryDirectory(prefix="foundation-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1], card=card)
            return push_folder(folder, repo_id, private=private, revision=revision, token=token, endpoint=endpoint,
                               commit_message=commit_message or f"Upload {self._hub_spec()[0]} with {LIBRARY_NAME}")


def _read_config(file: Path, source: str, name: str, config_class: type) -> Any:
    """Read config.json, check it belongs to model ``name``, and build the config dataclass."""
    if not file.is_file():
        raise CheckpointError(f"{source}: no {CONFIG_NAME}; not an export of {LIBRARY_NAME}; re-export with save_pretrained")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source}: {CONFIG_NAME} is not valid JSON ({err}); re-export the model") from err
    if not isinstance(data, dict) or "model_name" not in data:
        raise CheckpointError(f"{source}: {CONFIG_NAME} has no 'model_name' key, so it was not written by "
                              f"{LIBRARY_NAME}'s save_pretrained; re-export the model with it")
    found = data.pop("model_name")
    data.pop("foundation_version", None)
    fields = {f.name for f in dataclasses.fields(config_class)}
    for key in NOTE_KEYS:  # an export's notes on its data and making, not model config
        if key not in fields:
            data.pop(key, None)
    if found != name:
        raise CheckpointError(f"{source}: holds a {found!r} model, not {name!r}; load it with the model class "
                              f"registered as {found!r} (foundation.registry.MODELS.get({found!r}))")
    try:
        return dataclass_from_dict(config_class, data, where=f"{source}/{CONFIG_NAME}")
    except ConfigError as err:
        raise CheckpointError(f"{err}; the export does not fit this version of {config_class.__name__}") from err
