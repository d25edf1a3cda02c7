"""LoRA through peft: a plain-data config, target presets, adapter-only save/load, merge.

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

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from foundation.hub.names import ADAPTER_CONFIG_NAME as CONFIG_NAME, ADAPTER_WEIGHTS_NAME as WEIGHTS_NAME
from foundation.adapters.state import gathered_state_dict, is_writer_rank
from foundation.atomic import staged_folder
from foundation.hub.adapter_folder import read_adapter_config
from foundation.adapters.targets import TARGET_PRESETS, resolve_targets
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
    """

    preset: str = field(default="attention-mlp", metadata={"help": "target preset, or 'custom' for target_modules"})
    target_modules: tuple[str, ...] | str = field(default=(), metadata={"help": "explicit targets for preset 'custom'"})
    exclude_modules: tuple[str, ...] = field(default=(), metadata={"help": "module-name suffixes never wrapped"})
    r: int = field(default=8, metadata={"help": "LoRA rank (>= 1)"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; update scale alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
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

        The keys and files are peft's (``base_model.model.<module>.lora_A.weight``, adapter name stripped), so
        ``PeftModel.from_pretrained`` reads the folder too. ZeRO-3 shards are gathered first
        (:func:`gathered_state_dict`; call on every rank, rank 0 writes). Gates stacked on LoRA layers (a Dopamine layer's
        ``base_layer`` hop) are seen through.
        """
        state = _through_wrappers(peft_model, gathered_state_dict(peft_model, _is_lora_param))
        marker = re.compile(rf"\.(lora_\w+?)\.{re.escape(adapter_name)}(?=\.|$)")
        state = {marker.sub(r".\1", k): v for k, v in state.items() if marker.search(k)}
        if not state:
            raise CheckpointError(f"LoRA save to {str(folder)!r}: the model holds no LoRA tensors of adapter "
                                  f"{adapter_name!r}; inject it first")
        if not is_writer_rank():
            return Path(folder)
        with staged_folder(folder) as tmp:
            peft_model.peft_config[adapter_name].save_pretrained(str(tmp))
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        return Path(folder)

    @staticmethod
    def load(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False):
        """Wrap ``model`` with the LoRA adapter saved in ``folder``; strict: every LoRA tensor must land.

        Returns:
            A ``peft.PeftModel``; its LoRA parameters train only with ``is_trainable``.

        Raises:
            CheckpointError: the folder is not a LoRA adapter, or its keys do not match the model.
        """
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        cfg = read_adapter_config(folder)
        if cfg["peft_type"] != "LORA":
            raise CheckpointError(f"adapter folder {str(folder)!r}: {CONFIG_NAME} says peft_type "
                                  f"{cfg['peft_type']!r}; expected 'LORA'; load it with its own method")
        modules = dict(model.named_modules())
        missing_targets = [t for t in _target_names(cfg) if t not in modules]
        if missing_targets:
            raise CheckpointError(f"adapter folder {str(folder)!r}: the adapter targets modules the model lacks: "
                                  f"{missing_targets[:5]}; load it onto the model it was trained on")
        peft_config = LoraConfig.from_pretrained(str(folder))
        state = load_file(str(Path(folder) / WEIGHTS_NAME))
        peft_model = get_peft_model(model, peft_config, adapter_name=adapter_name)
        try:
            result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name)
        except RuntimeError as err:  # shape mismatch
            peft_model.unload()
            raise CheckpointError(f"adapter folder {str(folder)!r} does not fit the model: {err}") from err
        missing = [k for k in result.missing_keys if "lora_" in k]
        unexpected = list(result.unexpected_keys)
        if missing or unexpected:
            peft_model.unload()
            raise CheckpointError(f"adapter folder {str(folder)!r} does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}; load it onto the model it was trained on")
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(is_trainable)
        return peft_model

    from_adapter = load  # the method table's common name (DopamineModel.from_adapter)

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


def _through_wrappers(model: nn.Module, state: dict) -> dict:
    """Rename ``<gate>.base_layer.<rest>`` to ``<gate>.<rest>`` for every gate wrapped around a LoRA layer."""
    gates = [n for n, m in model.named_modules() if "dopamine_tau" in getattr(m, "adapter_layer_names", ())]
    renamed = {}
    for key, value in state.items():
        for gate in gates:
            if key.startswith(gate + ".base_layer."):
                key = gate + "." + key[len(gate) + len(".base_layer."):]
                break
        renamed[key] = value
    return renamed


def _target_names(cfg: dict) -> list[str]:
    targets = cfg.get("target_modules")
    if isinstance(targets, str) and targets.startswith("^(") and targets.endswith(")$"):
        return [t.replace(r"\.", ".") for t in targets[2:-2].split("|")]
    return []

