"""Which modules an adapter wraps: presets by module-name pattern, resolved before any mutation.

The suite's transformer blocks and timm's ViTs name their linear layers
``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; ConvNeXt keeps
``mlp.fc1``/``mlp.fc2`` as ``nn.Linear`` (channels-last); EfficientNet and
MobileNet do their pointwise work in 1x1 ``nn.Conv2d`` (``conv_pw``, ``conv_pwl``,
squeeze-excite ``conv_reduce``/``conv_expand``, ``conv_head``). peft's LoRA
supports ``nn.Linear`` and ``nn.Conv2d``; it cannot merge into grouped
(depthwise) convolutions, so presets never pick them and an explicit pattern
that hits one is refused.

Presets:
    ``attention``: ``attn.qkv``, ``attn.proj``.
    ``attention-mlp``: those plus ``mlp.fc1``, ``mlp.fc2``.
    ``mlp``: ``mlp.fc1``, ``mlp.fc2`` (ConvNeXt, or the MLP half of a transformer).
    ``pointwise``: every 1x1, ungrouped ``nn.Conv2d`` (EfficientNet/MobileNet blocks).
    ``all-linear``: every ``nn.Linear`` plus every 1x1 ungrouped ``nn.Conv2d``, except the classifier.

The classifier is read from timm's ``pretrained_cfg["classifier"]`` when the
model has one; otherwise pass ``exclude_modules``.

Per registered model, :data:`MODEL_PRESETS` names the default preset (looked up by
:func:`model_preset`): the transformers (``deeperbrain``'s ``Block``, ``slim-brain``'s and
``hiera4d``'s ``HieraBlock``, ``eegpt``) take ``attention-mlp``; the EfficientNet of ``ultrasound-mtl``
takes ``pointwise``; the published EEG models ``labram``, ``cbramod``, ``biot``, ``bendr`` take the preset of
their name (braindecode's module names: LaBraM's ``mlp.0``/``mlp.2``, CBraMod's and BENDR's ``linear1``/``linear2``
beside attention that ``nn.MultiheadAttention`` computes, BIOT's ``to_q``...``to_out`` and ``w1``/``w2``). Parts a fine-tuned forward pass never reaches (decoders, predictors,
EMA targets, other task heads) are excluded by the caller (``foundation.finetune.runner``).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from torch import nn

from foundation.errors import ConfigError, did_you_mean

__all__ = ["TARGET_PRESETS", "MODEL_PRESETS", "model_preset", "resolve_targets", "match_name", "classifier_names"]

TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("attn.qkv", "attn.proj"),
    "attention-mlp": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    "mlp": ("mlp.fc1", "mlp.fc2"),
    "pointwise": (),
    "all-linear": (),
    # the published EEG architectures as braindecode names their linear layers (attention inside
    # nn.MultiheadAttention is left out: it reads out_proj.weight directly, so a wrapper would be bypassed)
    "labram": ("attn.qkv", "attn.proj", "mlp.0", "mlp.2"),
    "cbramod": ("linear1", "linear2"),
    "biot": ("fn.to_q", "fn.to_k", "fn.to_v", "fn.to_out", "fn.w1", "fn.w2"),
    "bendr": ("linear1", "linear2"),
}


MODEL_PRESETS: dict[str, str] = {
    "deeperbrain": "attention-mlp",
    "slim-brain": "attention-mlp",
    "hiera4d": "attention-mlp",
    "ultrasound-mtl": "pointwise",
    "labram": "labram",
    "cbramod": "cbramod",
    "eegpt": "attention-mlp",
    "biot": "biot",
    "bendr": "bendr",
}
DEFAULT_PRESET = "attention-mlp"


def model_preset(model_name: str) -> str:
    """The default target preset of a registered model (:data:`MODEL_PRESETS`; others: ``attention-mlp``)."""
    return MODEL_PRESETS.get(model_name, DEFAULT_PRESET)


def match_name(name: str, patterns: Sequence[str] | str) -> bool:
    """peft's matching rule: a string is a regex matched in full; a sequence matches by dotted suffix.

    Args:
        name: a module name from ``named_modules()`` ("blocks.0.attn.qkv").
        patterns: a regex string, or suffixes ("attn.qkv" matches "blocks.0.attn.qkv", not "xattn.qkv").
    """
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier module names of a timm model (``pretrained_cfg["classifier"]``), else ()."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier") if isinstance(cfg, dict) else None
    if head is None:
        return ()
    return (head,) if isinstance(head, str) else tuple(head)


def resolve_targets(
    model: nn.Module,
    preset: str | None,
    target_modules: Sequence[str] | str = (),
    exclude_modules: Sequence[str] = (),
    allowed: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    where: str = "adapter config",
) -> list[str]:
    """Resolve a preset or explicit patterns to the full names of the modules to wrap.

    Nothing is mutated. Every check runs here, so a failure leaves the model untouched.

    Args:
        model: the model to scan.
        preset: a key of :data:`TARGET_PRESETS`, or None to use ``target_modules``.
        target_modules: explicit patterns (suffixes, or one full-match regex string); used when ``preset`` is None.
        exclude_modules: suffix patterns never wrapped (the classifier of a timm model is always added).
        allowed: module types the method can wrap.
        where: names the config for messages.

    Returns:
        The matched module names, in ``named_modules()`` order.

    Raises:
        ConfigError: unknown preset; no module matches (the message repeats the patterns); a matched module is
            of a type the method cannot wrap, or a grouped convolution (LoRA cannot merge into it).
    """
    exclude = tuple(exclude_modules) + classifier_names(model)
    if preset is not None and preset not in TARGET_PRESETS:
        raise ConfigError(f"{where}, field preset: unknown preset {preset!r}; {did_you_mean(preset, TARGET_PRESETS)}")
    if preset is None and not target_modules:
        raise ConfigError(f"{where}: fields preset and target_modules are both empty; name a preset "
                          f"({', '.join(TARGET_PRESETS)}) or give target_modules")
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or match_name(name, exclude):
            continue
        if preset == "pointwise":
            hit = _is_pointwise(module)
        elif preset == "all-linear":
            hit = isinstance(module, nn.Linear) or _is_pointwise(module)
        elif preset is not None:
            hit = match_name(name, TARGET_PRESETS[preset])
        else:
            hit = match_name(name, target_modules)
        if not hit:
            continue
        if not isinstance(module, allowed):
            kinds = ", ".join(_qualname(t) for t in allowed)
            raise ConfigError(f"{where}: module {name!r} matches the targets but is a {_qualname(type(module))}; "
                              f"expected one of {kinds}; narrow target_modules or add it to exclude_modules")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ConfigError(f"{where}: module {name!r} is a grouped Conv2d (groups={module.groups}); adapters "
                              f"cannot merge into it; add it to exclude_modules")
        names.append(name)
    if not names:
        asked = f"preset {preset!r} ({', '.join(TARGET_PRESETS[preset]) or 'by module type'})" if preset else \
            f"target_modules {target_modules!r}"
        hint = ""
        if preset is None and not isinstance(target_modules, str):
            suffixes = {".".join(n.split(".")[-k:]) for n, m in model.named_modules() if n and isinstance(m, allowed)
                        and not match_name(n, exclude) for k in (1, 2)}
            close = difflib.get_close_matches(str(target_modules[0]), sorted(suffixes), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{where}: {asked} matched no module of {type(model).__name__} "
                          f"(excluding {list(exclude)}){hint}; check the names in model.named_modules()")
    return names
