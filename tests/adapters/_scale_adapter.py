"""A third adapter method, defined and registered by the tests alone: a learned per-unit output scale.

h' = g * h on the outputs of the target linear layers, g = 1 at step 0 (an IA3-like scaling, Liu et al. 2022,
https://arxiv.org/abs/2205.05638). It exists to show that registering one :class:`AdapterModel` subclass is
all a new method needs: the contract tests and ``run_finetune`` pick it up from the registry.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.adapters import AdapterModel, register_adapter, resolve_targets
from foundation.adapters.state import gathered_state_dict
from foundation.errors import CheckpointError


@dataclass
class ScaleConfig:
    target_modules: tuple[str, ...] | str = field(default=("mlp.fc1",), metadata={"help": "linear layers scaled"})
    exclude_modules: tuple[str, ...] = field(default=(), metadata={"help": "module-name suffixes never scaled"})

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules)
        self.exclude_modules = tuple(self.exclude_modules)


class ScaleLayer(nn.Module):
    """``base_layer`` followed by a per-unit gain: [B, ..., D_in] -> [B, ..., D]."""

    adapter_layer_names = ("scale_gain",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str) -> None:
        super().__init__()
        self.base_layer, self.active, self.disabled = base_layer, adapter_name, False
        w = base_layer.weight
        self.scale_gain = nn.ParameterDict({adapter_name: nn.Parameter(torch.ones(w.shape[0], dtype=w.dtype))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h if self.disabled else h * self.scale_gain[self.active]


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@register_adapter
class ScaleAdapter(AdapterModel):
    method, peft_type, config_class, marker, supports_merge = "scale", "SCALE", ScaleConfig, "scale_", True

    def _plan(self, model: nn.Module, config: ScaleConfig) -> list[str]:
        return resolve_targets(model, None, config.target_modules, config.exclude_modules, allowed=(nn.Linear,),
                               where="ScaleConfig.target_modules")

    def _inject(self, model: nn.Module, config: ScaleConfig, plan: list[str], adapter_name: str) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for name in plan:
            _set(model, name, ScaleLayer(model.get_submodule(name), adapter_name))
        return model

    def _layers(self) -> list[tuple[str, ScaleLayer]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, ScaleLayer)]

    def _unload(self) -> nn.Module:
        for name, layer in self._layers():
            _set(self.model, name, layer.base_layer)
        return self.model

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        suffix = f".scale_gain.{self.adapter_name}"
        state = gathered_state_dict(self.model, lambda n: n.endswith(suffix))
        return {k[: -len(self.adapter_name) - 1]: v for k, v in state.items()}

    def _load_adapter_state(self, state: dict[str, torch.Tensor], folder: str) -> None:
        expected = self.adapter_state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise CheckpointError(f"adapter folder {folder!r} does not match the model")
        with torch.no_grad():
            for name, layer in self._layers():
                layer.scale_gain[self.adapter_name].copy_(state[f"{name}.scale_gain"])

    def _config_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()}

    @classmethod
    def config_from_dict(cls, data: dict[str, Any], folder: str) -> ScaleConfig:
        return ScaleConfig(target_modules=tuple(data["target_modules"]), exclude_modules=tuple(data["exclude_modules"]))

    def set_adapter_enabled(self, enabled: bool) -> None:
        for _, layer in self._layers():
            layer.disabled = not enabled

    def _merge(self) -> nn.Module:
        with torch.no_grad():
            for _, layer in self._layers():
                g = layer.scale_gain[self.adapter_name]
                layer.base_layer.weight.mul_(g[:, None])
                if layer.base_layer.bias is not None:
                    layer.base_layer.bias.mul_(g)
        return self._unload()
