"""DopamineModel: finds the target layers, wraps them, drives the schedule, saves and loads the adapter.

Shaped like peft's tuner models (``IA3Model``): the base model is kept as
``self.model`` and frozen; every check runs before any module is swapped, so a
failure leaves no half-wrapped network. Paper/REFERENCE: "Dopamine gate" (see
:mod:`foundation.adapters.dopamine.config`).

Combining with LoRA: wrap the base with LoRA first (``LoraAdapterModel.inject``),
then pass the returned ``PeftModel`` here with targets naming the same linear
layers; the gate then sits on the output of each LoRA-adapted layer and both
train (parameters whose name holds ``lora_`` keep their trainable flag).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from foundation.adapters.dopamine.conditional import SkipInactiveLinear
from foundation.adapters.dopamine.config import DopamineConfig, gate_mix_at, temperature_at
from foundation.adapters.dopamine.layer import DopamineLayer
from foundation.hub.names import ADAPTER_CONFIG_NAME as CONFIG_NAME, ADAPTER_WEIGHTS_NAME as WEIGHTS_NAME
from foundation.adapters.state import gathered_state_dict, is_writer_rank
from foundation.atomic import staged_folder
from foundation.hub.adapter_folder import read_adapter_config
from foundation.adapters.targets import resolve_targets
from foundation.errors import CheckpointError, ConfigError, TrainingError

__all__ = ["DopamineModel", "PEFT_TYPE"]

PEFT_TYPE = "DOPAMINE"
_OTHER_ADAPTER_MARKERS = ("lora_",)


def _gateable_types() -> tuple[type[nn.Module], ...]:
    from peft.tuners.lora import Linear as LoraLinear

    return (nn.Linear, LoraLinear, SkipInactiveLinear)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class DopamineModel(nn.Module):
    """Frozen ``model`` with Dopamine gates on the outputs of the target layers.

    Args:
        model: the base model (or a ``peft.PeftModel`` holding LoRA, to combine both).
        config: what to gate and how to anneal.
        adapter_name: key of the adapter's parameters.

    Raises:
        ConfigError: no target matches (the message repeats the patterns), a target has no ``out_features``,
            a skip module is not a plain ``nn.Linear``, or the model already holds Dopamine layers.
    """

    def __init__(self, model: nn.Module, config: DopamineConfig, adapter_name: str = "default") -> None:
        super().__init__()
        targets, skips = self._plan(model, config)
        self.model = model
        self.config = config
        self.adapter_name = adapter_name
        self.step = 0
        for name, p in model.named_parameters():  # frozen base; other adapters keep their flags
            if not any(m in name for m in _OTHER_ADAPTER_MARKERS):
                p.requires_grad_(False)
        for name in skips:
            _set_module(model, name, SkipInactiveLinear(model.get_submodule(name), config.skip_strategy))
        for name in targets:
            _set_module(model, name, DopamineLayer(model.get_submodule(name), adapter_name, config))
        self.target_names = targets
        self.skip_names = skips
        self.set_step(0)

    @staticmethod
    def _plan(model: nn.Module, config: DopamineConfig) -> tuple[list[str], list[str]]:
        """Resolve and check targets and skip modules; mutates nothing."""
        if any(isinstance(m, DopamineLayer) for m in model.modules()):
            raise ConfigError("DopamineModel: the model already holds Dopamine layers; wrap the original model, "
                              "or load a second adapter with DopamineModel.from_adapter on a fresh copy")
        targets = resolve_targets(model, None, config.target_modules, config.exclude_modules,
                                  allowed=_gateable_types(), where="DopamineConfig.target_modules")
        skips: list[str] = []
        if config.skip_modules:
            skips = resolve_targets(model, None, config.skip_modules, config.exclude_modules,
                                    allowed=(nn.Linear,), where="DopamineConfig.skip_modules")
            wrong = [n for n in skips if type(model.get_submodule(n)) is not nn.Linear]
            if wrong:
                raise ConfigError(f"DopamineConfig.skip_modules: {wrong} are not plain nn.Linear (e.g. LoRA-wrapped); "
                                  f"column skipping needs the plain weight; set skip_modules=() for them")
        return targets, skips

    def forward(self, *args, **kwargs):
        """Run the wrapped model (input and output shapes are the base model's)."""
        return self.model(*args, **kwargs)

    # -- schedule -------------------------------------------------------------------------------------------
    def dopamine_layers(self) -> Iterator[tuple[str, DopamineLayer]]:
        """(name, layer) of every Dopamine layer, names relative to ``self.model``."""
        for name, module in self.model.named_modules():
            if isinstance(module, DopamineLayer):
                yield name, module

    def set_step(self, step: int) -> None:
        """Set the optimizer step: pushes the temperature and the warm-up mix to every layer."""
        self.step = int(step)
        t, m = temperature_at(self.step, self.config), gate_mix_at(self.step, self.config)
        for _, layer in self.dopamine_layers():
            layer.temperature, layer.mix = t, m

    def on_step_end(self, step: int) -> None:
        """Engine hook, called after every optimizer step: move the schedules to ``step``."""
        self.set_step(step)

    def advance(self) -> None:
        """Call once after every optimizer step."""
        self.set_step(self.step + 1)

    def train(self, mode: bool = True) -> "DopamineModel":
        """Switch mode; in eval mode (with ``hard_in_eval``) the skip modules skip inactive columns."""
        super().train(mode)
        for module in self.model.modules():
            if isinstance(module, SkipInactiveLinear):
                module.skipping = (not mode) and self.config.hard_in_eval
        return self

    def gate_activity(self) -> torch.Tensor:
        """Mean soft gate over every gated unit of the last training forward, a scalar with gradient.

        Add ``weight * model.gate_activity()`` to the loss to push thresholds up and make the hard gate sparser
        (fewer multiply-adds at inference).

        Raises:
            TrainingError: called before any training-mode forward.
        """
        means = [layer.gate_mean for _, layer in self.dopamine_layers() if layer.gate_mean is not None]
        if not means:
            raise TrainingError("DopamineModel.gate_activity: no training-mode forward since the last eval one; "
                                "call model.train() and run a forward pass first")
        return torch.stack(means).mean()

    # -- adapter switches ---------------------------------------------------------------------------------
    def set_adapter_enabled(self, enabled: bool) -> None:
        """Enable or bypass every gate (a bypassed gate returns the base output unchanged)."""
        for _, layer in self.dopamine_layers():
            layer.disabled = not enabled

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model computes exactly as the base model."""
        self.set_adapter_enabled(False)
        try:
            yield
        finally:
            self.set_adapter_enabled(True)

    def unload(self) -> nn.Module:
        """Remove the gates and skip wrappers; returns the base model (its parameters stay frozen)."""
        for name, layer in list(self.dopamine_layers()):
            _set_module(self.model, name, layer.base_layer)
        for name, module in list(self.skip_layers()):
            _set_module(self.model, name, module.base_layer)
        return self.model

    # -- accounting ---------------------------------------------------------------------------------------
    def skip_layers(self) -> Iterator[tuple[str, SkipInactiveLinear]]:
        """(name, layer) of every column-skipping layer (inside a gate when a module is both target and skip)."""
        for name, module in self.model.named_modules():
            if isinstance(module, SkipInactiveLinear):
                yield name, module

    def mac_counts(self) -> dict[str, tuple[int, int]]:
        """name -> (multiply-adds done, dense multiply-adds) of every skip layer since the last reset."""
        return {n: (m.counts.done, m.counts.dense) for n, m in self.skip_layers()}

    def reset_mac_counts(self) -> None:
        """Zero the multiply-add counters of every skip layer."""
        for _, m in self.skip_layers():
            m.counts.reset()

    # -- save / load --------------------------------------------------------------------------------------
    def _is_adapter_key(self, name: str) -> bool:
        return any(f".{attr}.{self.adapter_name}" in f".{name}" for attr in DopamineLayer.adapter_layer_names)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, keyed ``<module>.dopamine_tau`` (adapter name stripped, as peft does).

        ZeRO-3 shards are gathered first; call on every rank.
        """
        state = gathered_state_dict(self.model, self._is_adapter_key)
        suffix = f".{self.adapter_name}"
        return {(k[: -len(suffix)] if k.endswith(suffix) else k): v for k, v in state.items()}

    def save_adapter(self, folder: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` (``peft_type`` "DOPAMINE", config, step) and ``adapter_model.safetensors``.

        ZeRO-3 shards are gathered first: call on every rank; rank 0 writes, atomically.
        """
        state = self.adapter_state_dict()
        if not is_writer_rank():
            return Path(folder)
        meta = {"peft_type": PEFT_TYPE, "method": "dopamine", "step": self.step, "targets": self.target_names,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}}
        with staged_folder(folder) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "peft_type": PEFT_TYPE})
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return Path(folder)

    @classmethod
    def from_adapter(cls, model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default",
                     is_trainable: bool = False) -> "DopamineModel":
        """Wrap ``model`` with the Dopamine adapter saved in ``folder``; strict key matching.

        Raises:
            CheckpointError: not a Dopamine folder, or missing / unexpected / mis-shaped tensors.
        """
        meta = read_adapter_config(folder)
        if meta["peft_type"] != PEFT_TYPE:
            raise CheckpointError(f"adapter folder {str(folder)!r}: {CONFIG_NAME} says peft_type "
                                  f"{meta['peft_type']!r}; expected {PEFT_TYPE!r}; load it with its own method")
        names = {f.name for f in fields(DopamineConfig)}
        config = DopamineConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.items() if k in names})
        state = load_file(str(Path(folder) / WEIGHTS_NAME))
        wrapped = cls(model, config, adapter_name)
        expected = wrapped.adapter_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        bad = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
        if missing or unexpected or bad:
            wrapped.unload()
            raise CheckpointError(f"adapter folder {str(folder)!r} does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]}; load it onto the model "
                                  f"it was trained on")
        with torch.no_grad():
            for name, layer in wrapped.dopamine_layers():
                for attr in DopamineLayer.adapter_layer_names:
                    getattr(layer, attr)[adapter_name].copy_(state[f"{name}.{attr}"])
                    getattr(layer, attr)[adapter_name].requires_grad_(is_trainable)
        wrapped.set_step(int(meta.get("step", 0)))
        return wrapped
