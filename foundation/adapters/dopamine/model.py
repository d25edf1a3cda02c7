"""DopamineModel: finds the target layers, wraps them, drives the schedule, saves, loads and reports.

An :class:`~foundation.adapters.base.AdapterModel` shaped like peft's tuner models (``IA3Model``): the base
model is kept as ``self.model`` and frozen; every check runs before any module is swapped, so a failure
leaves no half-wrapped network. The method is described in :mod:`foundation.adapters.dopamine.config`.

Combining with LoRA: wrap the base with LoRA first (``LoraAdapterModel(model, ...)``), then pass that
adapter here with targets naming the same linear layers; the gate then sits on the output of each
LoRA-adapted layer and both train (parameters whose name holds ``lora_`` keep their trainable flag).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import nn

from foundation.adapters.base import AdapterModel, AdapterReportContext
from foundation.adapters.dopamine.conditional import SkipInactiveLinear
from foundation.adapters.dopamine.config import (
    DopamineConfig,
    gate_mix_at,
    temperature_at,
)
from foundation.adapters.dopamine.layer import DopamineLayer
from foundation.adapters.state import gathered_state_dict
from foundation.adapters.targets import resolve_targets
from foundation.atomic import atomic_write_json
from foundation.errors import CheckpointError, ConfigError, TrainingError

__all__ = ["PEFT_TYPE", "DopamineModel"]

PEFT_TYPE = "DOPAMINE"
ADAPTER_TYPE = "foundation-dopamine"  # adapter_config.json["adapter_type"]: peft cannot read these folders
_OTHER_ADAPTER_MARKERS = ("lora_",)


def _gateable_types() -> tuple[type[nn.Module], ...]:
    from peft.tuners.lora import Linear as LoraLinear

    return (nn.Linear, LoraLinear, SkipInactiveLinear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# Per registered model, the config fields used when neither --targets nor the fields name targets: the
# transformers gate their MLPs' hidden units (and skip the inactive columns in fc2); the EfficientNet of the
# ultrasound model gates the expansion 1x1 convolutions of its blocks (no column skipping for convolutions).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "deeperbrain": {"target_modules": ("mlp.fc1",), "skip_modules": ("mlp.fc2",)},
    "slim-brain": {"target_modules": ("mlp.fc1",), "skip_modules": ("mlp.fc2",)},
    "hiera4d": {"target_modules": ("mlp.fc1",), "skip_modules": ("mlp.fc2",)},
    "ultrasound-mtl": {"target_modules": ("conv_pw",), "skip_modules": ()},
    "labram": {"target_modules": ("mlp.0",), "skip_modules": ("mlp.2",)},
    "cbramod": {"target_modules": ("linear1",), "skip_modules": ("linear2",)},
    "eegpt": {"target_modules": ("mlp.fc1",), "skip_modules": ("mlp.fc2",)},
    "biot": {"target_modules": ("fn.w1",), "skip_modules": ("fn.w2",)},
    "bendr": {"target_modules": ("linear1",), "skip_modules": ("linear2",)},
}


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _first_samples(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (a tensor, or a dict of batch entries)."""
    if isinstance(inputs, dict):
        return {k: (v[:n] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in inputs.items()}
    return inputs[:n]


class DopamineModel(AdapterModel):
    """Frozen ``model`` with Dopamine gates on the outputs of the target layers.

    Args:
        model: the base model (or a LoRA adapter model, to combine both).
        config: what to gate and how to anneal.
        adapter_name: key of the adapter's parameters.

    Raises:
        ConfigError: no target matches (the message repeats the patterns), a target has no ``out_features``,
            a skip module is not a plain ``nn.Linear``, or the model already holds Dopamine layers.
    """

    method = "dopamine"
    peft_type = PEFT_TYPE
    config_class = DopamineConfig
    marker = "dopamine_"

    def _plan(self, model: nn.Module, config: DopamineConfig) -> tuple[list[str], list[str]]:
        """Resolve and check targets and skip modules; mutates nothing."""
        if any(isinstance(m, DopamineLayer) for m in model.modules()):
            raise ConfigError("DopamineModel: the model already holds Dopamine layers; wrap the original model, "
                              "or load a second adapter with DopamineModel.load on a fresh copy")
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

    @classmethod
    def config_for(cls, model_name: str, targets: tuple[str, ...], exclude: tuple[str, ...],
                   fields: dict[str, Any], where: str = "adapter options") -> DopamineConfig:
        """``targets`` (then no column skipping unless ``fields`` name ``skip_modules``), else the model's defaults
        (:data:`MODEL_DEFAULTS`; other models: ``mlp.fc1`` gated, ``mlp.fc2`` skipping)."""
        fields = dict(fields)
        if targets or "target_modules" in fields:
            fields.setdefault("skip_modules", ())
        else:
            for key, value in MODEL_DEFAULTS.get(model_name, {}).items():
                fields.setdefault(key, value)
        return super().config_for(model_name, targets, exclude, fields, where)

    def preflight(self, ctx: AdapterReportContext) -> None:
        """Run what :meth:`report` runs on the first held-out batch, writing nothing (fails before training)."""
        from foundation.adapters.dopamine.attribution import neuron_attribution

        if ctx.task != "classification":
            return super().preflight(ctx)
        inputs, labels = next(iter(ctx.batches()))
        neuron_attribution(self, [(_first_samples(inputs, 2), torch.as_tensor(labels)[:2])], ctx.num_outputs)

    def _inject(self, model: nn.Module, config: DopamineConfig, plan: tuple[list[str], list[str]],
                adapter_name: str) -> nn.Module:
        targets, skips = plan
        for name, p in model.named_parameters():  # frozen base; other adapters keep their flags
            if not any(m in name for m in _OTHER_ADAPTER_MARKERS):
                p.requires_grad_(False)
        for name, p in model.named_parameters():  # modules saved whole (a new task head) train
            if self._is_saved_whole(name, config):
                p.requires_grad_(True)
        for name in skips:
            _set_module(model, name, SkipInactiveLinear(model.get_submodule(name), config.skip_strategy))
        for name in targets:
            _set_module(model, name, DopamineLayer(model.get_submodule(name), adapter_name, config))
        self.target_names, self.skip_names = targets, skips
        self.step = 0
        self._push_schedule(model)
        return model

    def _unload(self) -> nn.Module:
        for name, layer in list(self.dopamine_layers()):
            _set_module(self.model, name, layer.base_layer)
        for name, module in list(self.skip_layers()):
            _set_module(self.model, name, module.base_layer)
        return self.model

    # -- schedule -------------------------------------------------------------------------------------------
    def dopamine_layers(self) -> Iterator[tuple[str, DopamineLayer]]:
        """(name, layer) of every Dopamine layer, names relative to ``self.model``."""
        for name, module in self.model.named_modules():
            if isinstance(module, DopamineLayer):
                yield name, module

    def _push_schedule(self, model: nn.Module) -> None:
        t, m = temperature_at(self.step, self.config), gate_mix_at(self.step, self.config)
        for module in model.modules():
            if isinstance(module, DopamineLayer):
                module.temperature, module.mix = t, m

    def set_step(self, step: int) -> None:
        """Set the optimizer step: pushes the temperature and the warm-up mix to every layer."""
        self.step = int(step)
        self._push_schedule(self.model)

    def on_step_end(self, step: int) -> None:
        """Engine hook, called after every optimizer step: move the schedules to ``step``."""
        self.set_step(step)

    def train(self, mode: bool = True) -> DopamineModel:
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

    def auxiliary_loss(self) -> torch.Tensor:
        """:meth:`gate_activity`: weighted into the loss, it makes the hard gate sparser."""
        return self.gate_activity()

    def set_adapter_enabled(self, enabled: bool) -> None:
        """Enable or bypass every gate (a bypassed gate returns the base output unchanged)."""
        for _, layer in self.dopamine_layers():
            layer.disabled = not enabled

    # -- accounting -----------------------------------------------------------------------------------------
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

    @torch.no_grad()
    def report(self, ctx: AdapterReportContext) -> dict[str, str]:
        """Multiply-adds skipped by the hard gate over the held-out inputs (``macs.json``); for classification
        the per-class neuron firing (``attribution/``: CSV, markdown, PNG heatmap).

        Every rank runs the forward passes (collective under ZeRO-3); ``ctx.is_main`` writes.
        """
        from foundation.adapters.dopamine.attribution import (
            neuron_attribution,
            write_attribution,
        )

        was_training = self.training
        self.eval()
        self.reset_mac_counts()
        try:
            for inputs, _ in ctx.batches():
                self(inputs)
        finally:
            self.train(was_training)
        macs = self.mac_counts()
        done, dense = sum(d for d, _ in macs.values()), sum(n for _, n in macs.values())
        files: dict[str, str] = {}
        if ctx.is_main and dense:
            report = {"layers": {k: {"done": d, "dense": n} for k, (d, n) in macs.items()},
                      "done": done, "dense": dense, "saved_fraction": 1 - done / dense}
            files["macs"] = str(atomic_write_json(ctx.out / "macs.json", report))
        if ctx.task == "classification":
            rates = neuron_attribution(self, ctx.batches(), ctx.num_outputs)
            if ctx.is_main:
                written = write_attribution(rates, ctx.out / "attribution")
                files.update({f"attribution_{k}": str(v) for k, v in written.items()})
        return files

    # -- save / load ----------------------------------------------------------------------------------------
    def _is_adapter_key(self, name: str) -> bool:
        return any(f".{attr}.{self.adapter_name}" in f".{name}" for attr in DopamineLayer.adapter_layer_names)

    @staticmethod
    def _is_saved_whole(name: str, config: DopamineConfig) -> bool:
        return any(name == m or name.startswith(m + ".") for m in config.modules_to_save)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors, keyed ``<module>.dopamine_tau`` (adapter name stripped, as peft does), plus the
        parameters of ``modules_to_save`` under their own names (``head.weight``).

        ZeRO-3 shards are gathered first; call on every rank.
        """
        state = gathered_state_dict(self.model, lambda n: self._is_adapter_key(n) or self._is_saved_whole(
            n, self.config))
        suffix = f".{self.adapter_name}"
        return {(k.removesuffix(suffix)): v for k, v in state.items()}

    def _load_adapter_state(self, state: dict[str, torch.Tensor], folder: str) -> None:
        expected = self.adapter_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        bad = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or bad:
            raise CheckpointError(f"adapter folder {folder!r} does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]}; load it onto the model "
                                  f"it was trained on")
        with torch.no_grad():
            for name, layer in self.dopamine_layers():
                for attr in DopamineLayer.adapter_layer_names:
                    getattr(layer, attr)[self.adapter_name].copy_(state[f"{name}.{attr}"])
            for key, value in state.items():
                if self._is_saved_whole(key, self.config):
                    self.model.get_parameter(key).copy_(value)

    def _config_dict(self) -> dict[str, Any]:
        return {"method": self.method, "adapter_type": ADAPTER_TYPE, "library_name": "foundation-suite",
                "note": "a foundation-suite Dopamine adapter, not a peft adapter: load it with foundation.load",
                "step": self.step, "targets": self.target_names,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}}

    @classmethod
    def config_from_dict(cls, data: dict[str, Any], folder: str) -> DopamineConfig:
        names = {f.name for f in fields(DopamineConfig)}
        return DopamineConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})

    def _after_load(self, meta: dict[str, Any]) -> None:
        self.set_step(int(meta.get("step", 0)))
