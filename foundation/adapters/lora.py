"""LoRA through peft: a plain-data config, target presets, adapter-only save/load, merge.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685. The layers, merge arithmetic and the folder
format are peft's (``LoraConfig``, ``get_peft_model``, ``PeftModel``); this
module adds what the suite needs around them: presets by module-name pattern
(:mod:`foundation.adapters.targets`), checks that run before the model is
touched, ZeRO-3 gathering on save, atomic writes and our error classes.

The default rank 8 / alpha 16 are common peft defaults for ViTs (unverified for
the suite's models).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from foundation.adapters.io import (
    CONFIG_NAME,
    gathered_state_dict,
    read_adapter_config,
    staged_folder,
)
from foundation.adapters.targets import TARGET_PRESETS, resolve_targets
from foundation.errors import CheckpointError, ConfigError, did_you_mean

__all__ = ["LoraAdapterConfig", "LoraAdapterModel"]

_BIAS = ("none", "all", "lora_only")


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
        bias: which biases train: "none", "all", "lora_only".
        use_rslora: scale by alpha / sqrt(r) (rank-stabilised LoRA).
    """

    preset: str = field(default="attention-mlp", metadata={"help": "target preset, or 'custom' for target_modules"})
    target_modules: tuple[str, ...] | str = field(default=(), metadata={"help": "explicit targets for preset 'custom'"})
    exclude_modules: tuple[str, ...] = field(default=(), metadata={"help": "module-name suffixes never wrapped"})
    r: int = field(default=8, metadata={"help": "LoRA rank (>= 1)"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; update scale alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
    bias: str = field(default="none", metadata={"help": "trainable biases: none | all | lora_only"})
    use_rslora: bool = field(default=False, metadata={"help": "scale alpha / sqrt(r) instead of alpha / r"})

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules)
        self.exclude_modules = tuple(self.exclude_modules)
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
        if self.bias not in _BIAS:
            raise ConfigError(f"LoraAdapterConfig.bias: unknown value {self.bias!r}; {did_you_mean(self.bias, _BIAS)}")

    def to_peft(self, model: nn.Module):
        """Resolve the targets on ``model`` (no mutation) and build peft's ``LoraConfig``.

        Raises:
            ConfigError: no target matches, or a target cannot take LoRA (see ``resolve_targets``).
        """
        from peft import LoraConfig

        names = resolve_targets(model, None if self.preset == "custom" else self.preset, self.target_modules,
                                self.exclude_modules, where="LoraAdapterConfig")
        regex = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias=self.bias,
                          target_modules=regex, use_rslora=self.use_rslora, init_lora_weights=True)


def _is_lora_param(name: str) -> bool:
    return "lora_" in name


class LoraAdapterModel:
    """Inject, save, load and merge LoRA with peft; the returned model is a ``peft.PeftModel``.

    peft's B matrices start at zero, so the wrapped model is an exact identity at step 0.
    """

    @staticmethod
    def inject(model: nn.Module, config: LoraAdapterConfig, adapter_name: str = "default"):
        """Wrap the targets of ``model`` with LoRA and freeze everything else.

        All checks run before ``model`` is touched; peft then injects in place.

        Returns:
            A ``peft.PeftModel`` whose ``base_model.model`` is ``model``.

        Raises:
            ConfigError: see :meth:`LoraAdapterConfig.to_peft`.
        """
        from peft import get_peft_model

        peft_config = config.to_peft(model)
        return get_peft_model(model, peft_config, adapter_name=adapter_name)

    @staticmethod
    def save(peft_model, folder: str | os.PathLike, adapter_name: str = "default") -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (adapter tensors only), atomically.

        ZeRO-3 shards are gathered first (:func:`gathered_state_dict`; call on every rank).
        """
        state = gathered_state_dict(peft_model, _is_lora_param)
        with staged_folder(folder) as tmp:
            peft_model.save_pretrained(str(tmp), state_dict=state, selected_adapters=[adapter_name],
                                       safe_serialization=True)
            nested = tmp / adapter_name
            if adapter_name != "default" and nested.is_dir():  # peft nests non-default adapters
                for path in nested.iterdir():
                    path.rename(tmp / path.name)
                nested.rmdir()
        return Path(folder)

    @staticmethod
    def load(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False):
        """Wrap ``model`` with the LoRA adapter saved in ``folder``; strict: every saved tensor must land.

        Raises:
            CheckpointError: the folder is not a LoRA adapter, or its keys do not match the model.
        """
        from peft import PeftModel

        cfg = read_adapter_config(folder)
        if cfg["peft_type"] != "LORA":
            raise CheckpointError(f"adapter folder {str(folder)!r}: {CONFIG_NAME} says peft_type "
                                  f"{cfg['peft_type']!r}; expected 'LORA'; load it with its own method")
        missing_targets = [t for t in _target_names(cfg) if t not in dict(model.named_modules())]
        if missing_targets:
            raise CheckpointError(f"adapter folder {str(folder)!r}: the adapter targets modules the model lacks: "
                                  f"{missing_targets[:5]}; load it onto the model it was trained on")
        return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable)

    @staticmethod
    def merge(peft_model) -> nn.Module:
        """Fold the LoRA update into the base weights (``safe_merge``: refuses non-finite results).

        Returns:
            The base model with merged weights and no adapter modules.

        Raises:
            CheckpointError: the merged weights would hold NaN or inf.
        """
        try:
            return peft_model.merge_and_unload(safe_merge=True)
        except ValueError as err:
            raise CheckpointError(f"LoRA merge refused: {err}; the adapter holds non-finite values") from err


def _target_names(cfg: dict) -> list[str]:
    targets = cfg.get("target_modules")
    if isinstance(targets, str) and targets.startswith("^(") and targets.endswith(")$"):
        return [t.replace(r"\.", ".") for t in targets[2:-2].split("|")]
    return []

