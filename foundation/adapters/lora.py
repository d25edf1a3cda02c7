"""LoRA through peft as an :class:`~foundation.adapters.base.AdapterModel`: config, inject, save/load, merge.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685. The layers, merge arithmetic and the folder
format are peft's (``LoraConfig``, ``get_peft_model``, ``PeftModel``); this
module adds what the suite needs around them: presets by module-name pattern
(:mod:`foundation.adapters.targets`), checks that run before the model is
touched, ZeRO-3 gathering on save, atomic writes and our error classes.

Base biases stay frozen (peft's ``bias="none"``), so an adapter file holds LoRA
tensors only. The default rank 8 / alpha 16 are common peft defaults for ViTs (unverified for
the suite's models).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.adapters.base import AdapterModel
from foundation.adapters.state import gathered_state_dict
from foundation.adapters.targets import TARGET_PRESETS, model_preset, resolve_targets
from foundation.errors import CheckpointError, ConfigError, did_you_mean

__all__ = ["LoraAdapterConfig", "LoraAdapterModel"]


@dataclass
class LoraAdapterConfig:
    """What LoRA wraps and how.

    Args:
        preset: a key of ``TARGET_PRESETS``, or "custom" to use ``target_modules``.
        target_modules: suffix patterns (or one full-match regex) used when ``preset`` is "custom".
        exclude_modules: suffix patterns never wrapped (timm classifiers are excluded anyway).
        r: rank of the update.
        alpha: scale numerator; the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora).
        dropout: dropout on the LoRA branch input.
        use_rslora: scale by alpha / sqrt(r) (rank-stabilised LoRA).
        modules_to_save: module names trained whole and saved in the adapter file (peft's ``modules_to_save``:
            a fine-tune's new task head, ``("head",)``).
    """

    preset: str = field(default="attention-mlp", metadata={"help": "target preset, or 'custom' for target_modules"})
    target_modules: tuple[str, ...] | str = field(default=(), metadata={"help": "explicit targets for preset 'custom'"})
    exclude_modules: tuple[str, ...] = field(default=(), metadata={"help": "module-name suffixes never wrapped"})
    r: int = field(default=8, metadata={"help": "LoRA rank (>= 1)"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; update scale alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
    use_rslora: bool = field(default=False, metadata={"help": "scale alpha / sqrt(r) instead of alpha / r"})
    modules_to_save: tuple[str, ...] = field(default=(), metadata={"help": "modules trained whole and saved with "
                                                                           "the adapter (a new task head)"})

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules)
        self.exclude_modules = tuple(self.exclude_modules)
        self.modules_to_save = tuple(self.modules_to_save or ())
        valid = [*TARGET_PRESETS, "custom"]
        if self.preset not in valid:
            raise ConfigError(f"LoraAdapterConfig.preset: unknown preset {self.preset!r}; "
                              f"{did_you_mean(self.preset, valid)}")
        if self.preset == "custom" and not self.target_modules:
            raise ConfigError("LoraAdapterConfig: preset='custom' needs target_modules (got none); "
                              "give module-name suffixes such as ('attn.qkv',) or pick a preset")
        if self.preset != "custom" and self.target_modules:
            raise ConfigError(f"LoraAdapterConfig: preset={self.preset!r} and target_modules="
                              f"{self.target_modules!r} are both set; set preset='custom' to use target_modules")
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoraAdapterConfig.r: expected an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoraAdapterConfig.alpha: expected > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraAdapterConfig.dropout: expected a value in [0, 1), got {self.dropout!r}")

    def to_peft(self, model: nn.Module):
        """Resolve the targets on ``model`` (no mutation) and build peft's ``LoraConfig``.

        Raises:
            ConfigError: no target matches, or a target cannot take LoRA (see ``resolve_targets``).
        """
        from peft import LoraConfig

        names = resolve_targets(model, None if self.preset == "custom" else self.preset, self.target_modules,
                                self.exclude_modules, where="LoraAdapterConfig")
        regex = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                          target_modules=regex, use_rslora=self.use_rslora, init_lora_weights=True,
                          modules_to_save=list(self.modules_to_save) or None)


class LoraAdapterModel(AdapterModel):
    """LoRA on the targets of ``model`` through peft; ``self.model`` is the ``peft.PeftModel``.

    peft's B matrices start at zero, so the wrapped model is an exact identity at step 0. Files are peft's
    (``base_model.model.<module>.lora_A.weight``, adapter name stripped), so ``PeftModel.from_pretrained``
    reads a saved folder too.
    """

    method = "lora"
    peft_type = "LORA"
    config_class = LoraAdapterConfig
    marker = "lora_"
    supports_merge = True

    def _plan(self, model: nn.Module, config: LoraAdapterConfig) -> Any:
        return config.to_peft(model)  # resolves and checks the targets

    def _inject(self, model: nn.Module, config: LoraAdapterConfig, plan: Any, adapter_name: str) -> nn.Module:
        from peft import get_peft_model

        peft_model = get_peft_model(model, plan, adapter_name=adapter_name)
        _exact_modules_to_save(peft_model.base_model.model, config.modules_to_save)
        return peft_model

    def _unload(self) -> nn.Module:
        return self.model.unload()

    @classmethod
    def config_for(cls, model_name: str, targets: tuple[str, ...], exclude: tuple[str, ...],
                   fields: dict[str, Any], where: str = "adapter options") -> LoraAdapterConfig:
        """``targets`` as preset 'custom', else the preset of ``fields`` or the model's (``MODEL_PRESETS``)."""
        fields = dict(fields)
        if targets:
            fields["preset"] = "custom"
        else:
            fields.setdefault("preset", model_preset(model_name))
        return super().config_for(model_name, targets, exclude, fields, where)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA tensors keyed as peft saves them; gates stacked on LoRA layers (a Dopamine ``base_layer`` hop)
        are seen through. ZeRO-3 shards are gathered first: call on every rank."""
        state = _through_wrappers(self.model, gathered_state_dict(
            self.model, lambda n: self.marker in n or ".modules_to_save." in n))
        marker = re.compile(rf"\.(lora_\w+?)\.{re.escape(self.adapter_name)}(?=\.|$)")
        whole = re.compile(rf"\.modules_to_save\.{re.escape(self.adapter_name)}\.")  # peft: head.weight
        out = {marker.sub(r".\1", k): v for k, v in state.items() if marker.search(k)}
        out.update({whole.sub(".", k): v for k, v in state.items() if whole.search(k)})
        return out

    def _load_adapter_state(self, state: dict[str, torch.Tensor], folder: str) -> None:
        from peft import set_peft_model_state_dict

        try:
            result = set_peft_model_state_dict(self.model, state, adapter_name=self.adapter_name)
        except RuntimeError as err:  # shape mismatch
            raise CheckpointError(f"adapter folder {folder!r} does not fit the model: {err}") from err
        missing = [k for k in result.missing_keys if self.marker in k or ".modules_to_save." in k]
        unexpected = list(result.unexpected_keys)
        if missing or unexpected:
            raise CheckpointError(f"adapter folder {folder!r} does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}; load it onto the model it was trained on")

    def _config_dict(self) -> dict[str, Any]:
        data = self.model.peft_config[self.adapter_name].to_dict()
        return json_ready(data)

    @classmethod
    def config_from_dict(cls, data: dict[str, Any], folder: str) -> LoraAdapterConfig:
        """peft's ``LoraConfig`` fields -> :class:`LoraAdapterConfig` (targets as saved: a regex or suffixes).

        Raises:
            CheckpointError: the folder uses LoRA options the suite does not wrap (trained biases, per-module
                ranks).
        """
        unsupported = {k: data.get(k) for k in ("rank_pattern", "alpha_pattern") if data.get(k)}
        if data.get("bias", "none") != "none":
            unsupported["bias"] = data["bias"]
        if unsupported:
            raise CheckpointError(f"adapter folder {folder!r}: LoRA options {unsupported} are not supported; load it "
                                  f"with peft.PeftModel.from_pretrained instead")
        targets = data.get("target_modules")
        targets = targets if isinstance(targets, str) else tuple(targets or ())
        return LoraAdapterConfig(preset="custom", target_modules=targets, r=int(data.get("r", 8)),
                                 alpha=float(data.get("lora_alpha", 8)), dropout=float(data.get("lora_dropout", 0.0)),
                                 use_rslora=bool(data.get("use_rslora", False)),
                                 modules_to_save=tuple(data.get("modules_to_save") or ()))

    def set_adapter_enabled(self, enabled: bool) -> None:
        if enabled:
            self.model.base_model.enable_adapter_layers()
        else:
            self.model.base_model.disable_adapter_layers()

    def _merge(self) -> nn.Module:
        """``merge_and_unload(safe_merge=True)``: refuses non-finite merged weights."""
        try:
            return self.model.merge_and_unload(safe_merge=True)
        except ValueError as err:
            raise CheckpointError(f"LoRA merge refused: {err}; the adapter holds non-finite values") from err


def _exact_modules_to_save(model: nn.Module, names: tuple[str, ...]) -> None:
    """Freeze the copies of modules peft wrapped as ``modules_to_save`` only because their names end alike
    (peft matches by string suffix: ``head`` also takes ``encoder.stats_head``): only the modules named exactly
    train. The frozen copies stay (and are saved, unchanged), so ``PeftModel.from_pretrained``, which wraps the
    same modules, finds a tensor for each."""
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and name not in names:
            for p in module.modules_to_save.parameters():
                p.requires_grad_(False)


def json_ready(data: Any) -> Any:
    """Sets -> sorted lists, enums -> values, recursively (peft configs hold both)."""
    import enum

    if isinstance(data, dict):
        return {k: json_ready(v) for k, v in data.items()}
    if isinstance(data, (set, frozenset)):
        return sorted(json_ready(v) for v in data)
    if isinstance(data, (list, tuple)):
        return [json_ready(v) for v in data]
    if isinstance(data, enum.Enum):
        return data.value
    return data


def _through_wrappers(model: nn.Module, state: dict) -> dict:
    """Rename ``<gate>.base_layer.<rest>`` to ``<gate>.<rest>`` for every other method's layer wrapped around a
    LoRA layer (e.g. a Dopamine gate), so the keys are the ones peft expects."""
    gates = [n for n, m in model.named_modules() if hasattr(m, "base_layer") and getattr(m, "adapter_layer_names", ())
             and not any(a.startswith("lora_") for a in m.adapter_layer_names)]
    renamed = {}
    for key, value in state.items():
        for gate in gates:
            if key.startswith(gate + ".base_layer."):
                key = gate + "." + key[len(gate) + len(".base_layer."):]
                break
        renamed[key] = value
    return renamed
