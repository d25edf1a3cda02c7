"""One base class for every adapter method, in the manner of peft's ``BaseTuner`` (``tuners/tuners_utils.py``).

An adapter wraps a frozen base model (kept as ``self.model``), trains a few parameters whose names hold
the class's ``marker`` (``"lora_"``, ``"dopamine_"``), and reads and writes peft's folder layout
(``adapter_config.json`` with a ``peft_type`` + ``adapter_model.safetensors`` with the adapter tensors only).

A subclass sets the class attributes (``method``, ``peft_type``, ``config_class``, ``marker``) and
implements the five hooks ``_plan`` (resolve and check, no mutation), ``_inject`` (wrap),
``_unload`` (unwrap), ``adapter_state_dict`` / ``_load_adapter_state`` (the saved tensors) and
``_config_dict`` / ``config_from_dict`` (the saved config). The base gives it the rest:

- ``Adapter(model, config)`` / ``Adapter.inject(model, config)``: every check before any mutation;
- ``save(folder)``: ZeRO-3 shards gathered on every rank, rank 0 writes atomically;
- ``Adapter.load(model, folder)`` (alias ``from_folder``): strict, leaves no wrapper behind on failure;
- ``merge()`` (where ``supports_merge``), ``disable_adapter()``, ``unload()``;
- ``on_step_end(step)``: the engine's per-step hook (schedules);
- ``report(out, batches, ...)``: files the fine-tuning runner writes about the adapter.

Methods register once by name in :mod:`foundation.adapters.methods`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from foundation.adapters.state import is_writer_rank
from foundation.atomic import staged_folder
from foundation.errors import CheckpointError, ConfigError, did_you_mean
from foundation.hub.adapter_folder import read_adapter_config
from foundation.hub.names import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

__all__ = ["AdapterModel", "AdapterReportContext"]


@dataclass
class AdapterReportContext:
    """What :meth:`AdapterModel.report` may use: the output folder and the held-out batches.

    Args:
        out: the run folder (files go there).
        batches: a callable returning a fresh iterable of ``(inputs, labels)`` over the held-out data.
        task: "classification" or "regression".
        num_outputs: classes (classification) or targets (regression).
        is_main: whether this rank writes files (every rank runs the forward passes: ZeRO-3 is collective).
    """

    out: Path
    batches: Callable[[], Iterable[tuple[Any, torch.Tensor]]]
    task: str = "classification"
    num_outputs: int = 1
    is_main: bool = True


class AdapterModel(nn.Module):
    """Base of every adapter method: a frozen ``model`` plus the method's trainable parameters.

    Args:
        model: the base model (left in place and wrapped; its own parameters are frozen).
        config: an instance of ``config_class``.
        adapter_name: key of the adapter's parameters (peft's adapter name).

    Raises:
        ConfigError: ``config`` is not a ``config_class``, or the method's checks refuse the model
            (raised before any module is touched).
    """

    method: ClassVar[str] = ""  # registry name, lower-case and hyphen-joined ("lora")
    peft_type: ClassVar[str] = ""  # adapter_config.json["peft_type"] ("LORA")
    config_class: ClassVar[type] = object
    marker: ClassVar[str] = ""  # substring of every adapter parameter's name ("lora_")
    supports_merge: ClassVar[bool] = False
    base_model_name_or_path: str | None = None  # written to adapter_config.json (peft's key) when set

    def __init__(self, model: nn.Module, config: Any, adapter_name: str = "default") -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__}: expected a {self.config_class.__name__}, got "
                              f"{type(config).__name__}")
        plan = self._plan(model, config)  # every check; no mutation
        self.config = config
        self.adapter_name = adapter_name
        self.model = self._inject(model, config, plan, adapter_name)

    # -- what a subclass implements ------------------------------------------------------------------------
    def _plan(self, model: nn.Module, config: Any) -> Any:
        """Resolve and check everything the injection needs; must not mutate ``model``."""
        raise NotImplementedError

    def _inject(self, model: nn.Module, config: Any, plan: Any, adapter_name: str) -> nn.Module:
        """Wrap ``model`` following ``plan``; return the module ``forward`` calls (kept as ``self.model``)."""
        raise NotImplementedError

    def _unload(self) -> nn.Module:
        """Remove every wrapper; return the base model."""
        raise NotImplementedError

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors saved in ``adapter_model.safetensors`` (ZeRO-3 shards gathered: call on every rank)."""
        raise NotImplementedError

    def _load_adapter_state(self, state: dict[str, torch.Tensor], folder: str) -> None:
        """Copy ``state`` into the adapter; strict (raise CheckpointError naming missing/unexpected keys)."""
        raise NotImplementedError

    def _config_dict(self) -> dict[str, Any]:
        """JSON-ready contents of ``adapter_config.json`` (``peft_type`` is added by :meth:`save`)."""
        raise NotImplementedError

    @classmethod
    def config_from_dict(cls, data: dict[str, Any], folder: str) -> Any:
        """Rebuild a ``config_class`` from the saved ``adapter_config.json`` contents."""
        raise NotImplementedError

    def set_adapter_enabled(self, enabled: bool) -> None:
        """Switch every adapter layer on, or bypass it (a bypassed adapter computes as the base model)."""
        raise NotImplementedError

    def _merge(self) -> nn.Module:
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------------------------
    @classmethod
    def inject(cls, model: nn.Module, config: Any, adapter_name: str = "default") -> AdapterModel:
        """Wrap ``model`` (same as the constructor; every check runs before the model is touched)."""
        return cls(model, config, adapter_name)

    @classmethod
    def config_for(cls, model_name: str, targets: tuple[str, ...], exclude: tuple[str, ...],
                   fields: dict[str, Any], where: str = "adapter options") -> Any:
        """The config the fine-tuning runner uses: ``targets`` (or the method's default for ``model_name``),
        ``exclude`` (module-name suffixes never wrapped) and any other config ``fields``.

        ``config_class`` is a dataclass with ``target_modules`` and ``exclude_modules`` fields (as peft's configs).

        Raises:
            ConfigError: a field of ``fields`` is not a field of ``config_class`` (lists the valid ones).
        """
        from dataclasses import fields as dc_fields

        valid = {f.name for f in dc_fields(cls.config_class)}
        unknown = sorted(set(fields) - valid)
        if unknown:
            raise ConfigError(f"{where}: {cls.config_class.__name__} has no field {unknown[0]!r}; "
                              f"{did_you_mean(unknown[0], sorted(valid))}")
        kwargs = dict(fields)
        if targets:
            kwargs["target_modules"] = tuple(targets)
        kwargs["exclude_modules"] = tuple(exclude) + tuple(kwargs.get("exclude_modules", ()))
        return cls.config_class(**kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model (inputs and outputs are the base model's)."""
        return self.model(*args, **kwargs)

    def num_trainable(self) -> int:
        """Parameters that train: the adapter's, plus any the caller left trainable (a new task head)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the adapter's own parameters (names hold ``marker``)."""
        for name, p in self.named_parameters():
            if self.marker in name:
                yield name, p

    def on_step_end(self, step: int) -> None:
        """Engine hook after every optimizer step (``step`` counts from 1); the base class has no schedule."""

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A loss term of the method's own, added by the supervised objective with ``objective.sparsity_weight``
        (a scalar with gradient, from the last training forward); None: the method has none."""
        return None

    def preflight(self, ctx: AdapterReportContext) -> None:
        """Check, before training, that the model runs on the first held-out batch (and that :meth:`report`
        will work); writes nothing. The base class runs one eval-mode forward pass."""
        first = next(iter(ctx.batches()))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self(first[0])
        finally:
            self.train(was_training)

    def report(self, ctx: AdapterReportContext) -> dict[str, str]:
        """Files written about the trained adapter (name -> path); the base class writes none.

        Called on every rank after the held-out predictions (forward passes are collective under ZeRO-3).
        """
        return {}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``folder``, atomically.

        ZeRO-3 shards are gathered first: call on every rank; rank 0 writes.

        Raises:
            CheckpointError: the adapter holds no tensor.
        """
        state = self.adapter_state_dict()
        if not state:
            raise CheckpointError(f"{type(self).__name__}.save to {str(folder)!r}: the model holds no adapter tensor "
                                  f"of adapter {self.adapter_name!r}; inject it first")
        if not is_writer_rank():
            return Path(folder)
        meta = {**self._config_dict(), "peft_type": self.peft_type}
        if self.base_model_name_or_path:
            meta["base_model_name_or_path"] = self.base_model_name_or_path
        with staged_folder(folder) as tmp:
            save_file(state, str(tmp / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt", "peft_type": self.peft_type})
            (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return Path(folder)

    @classmethod
    def load(cls, model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default",
             is_trainable: bool = False) -> AdapterModel:
        """Wrap ``model`` with the adapter saved in ``folder``; strict: every tensor must land, none be left over.

        Args:
            model: the base model the adapter was trained on.
            folder: a folder written by :meth:`save` (or by peft, for LoRA).
            adapter_name: key of the adapter's parameters.
            is_trainable: keep the adapter's parameters trainable (default: frozen, for inference).

        Raises:
            CheckpointError: not a folder of this method, or its tensors do not match ``model`` (no wrapper is
                left on ``model`` then).
        """
        meta = read_adapter_config(folder)
        if meta["peft_type"] != cls.peft_type:
            raise CheckpointError(f"adapter folder {str(folder)!r}: {ADAPTER_CONFIG_NAME} says peft_type "
                                  f"{meta['peft_type']!r}; expected {cls.peft_type!r}; load it with its own method")
        try:
            config = cls.config_from_dict(meta, str(folder))
        except (ConfigError, TypeError, ValueError) as err:  # a value of the wrong type or range in the file
            raise CheckpointError(f"{Path(folder) / ADAPTER_CONFIG_NAME}: {type(err).__name__}: {err}; "
                                  "re-save the adapter") from err
        weights = Path(folder) / ADAPTER_WEIGHTS_NAME
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as err:  # a damaged or truncated safetensors file
            raise CheckpointError(f"{weights}: not a readable safetensors file ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else 'truncated'}); re-save or re-download "
                                  "the adapter") from err
        try:
            wrapped = cls(model, config, adapter_name)
        except ConfigError as err:
            raise CheckpointError(f"adapter folder {str(folder)!r} does not fit the model: {err}; load it onto the "
                                  f"model it was trained on") from err
        try:
            wrapped._load_adapter_state(state, str(folder))
        except Exception:
            wrapped.unload()
            raise
        for _, p in wrapped.adapter_parameters():
            p.requires_grad_(is_trainable)
        wrapped._after_load(meta)
        return wrapped

    from_folder = load

    def _after_load(self, meta: dict[str, Any]) -> None:
        """Restore state kept in the config file (a schedule's step); nothing by default."""

    def merge(self) -> nn.Module:
        """Fold the adapter into the base weights; returns the base model without adapter modules.

        Raises:
            ConfigError: the method cannot merge (its update is not a weight change).
            CheckpointError: the merged weights would hold NaN or inf.
        """
        if not self.supports_merge:
            raise ConfigError(f"adapter method {self.method!r} cannot merge into the base weights (its update is "
                              f"not a fixed weight change); keep the adapter, or call unload() for the base model")
        return self._merge()

    def unload(self) -> nn.Module:
        """Remove the adapter without merging; returns the base model (its parameters stay frozen)."""
        return self._unload()

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model computes exactly as the base model."""
        self.set_adapter_enabled(False)
        try:
            yield
        finally:
            self.set_adapter_enabled(True)
