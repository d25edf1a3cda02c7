"""Layer-wise learning-rate decay (BEiT/ELECTRA style) as optimizer param groups."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from foundation.errors import ConfigError

__all__ = ["layerwise_lr_groups", "depths_by_order", "find_block_stack"]


def _trainable_stack(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.Sequential)) and any(p.requires_grad for p in module.parameters())


def find_block_stack(model: nn.Module) -> str | None:
    """Path of the block stack of ``model`` for layer-wise LR decay, or None.

    A submodule that names its own stack (``block_stack()``, relative to itself: the published EEG encoders, whose
    braindecode models call it ``blocks``, ``encoder.layers``, ``target_encoder.blocks``,
    ``encoder.transformer.layers.layers`` or ``contextualizer.transformer_layers``) wins; otherwise the first
    ``ModuleList``/``Sequential`` named ``blocks`` (``blocks``, ``encoder.blocks``, ``backbone.blocks``). Only a
    stack with trainable parameters counts.
    """
    for name, module in model.named_modules():
        named = getattr(module, "block_stack", None)
        if callable(named):
            path = f"{name}.{named()}" if name else named()
            if _trainable_stack(model.get_submodule(path)):
                return path
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "blocks" and _trainable_stack(module):
            return name
    return None


def depths_by_order(model: nn.Module, blocks: str) -> tuple[dict[str, int], int]:
    """Depth of every parameter of ``model`` around its block stack ``blocks`` (a dotted module path).

    Inside block i (``<blocks>.i.``): ``i + 1``. Elsewhere by registration order, which follows the
    forward pass in the suite's encoders: registered before the first block (patch and position
    embeddings, channel encodings, a CNN stem) ``0``, after the last one (final norm, decoders) ``n + 1``.

    Args:
        model: the module whose ``named_parameters()`` are ranked.
        blocks: path of the ``ModuleList``/``Sequential`` of blocks, e.g. ``"encoder.blocks"``.

    Returns:
        ``({parameter name: depth}, n)`` with n the number of blocks.

    Raises:
        ConfigError: ``blocks`` is not a module of ``model`` or holds no parameter.
    """
    try:
        stack = model.get_submodule(blocks)
    except AttributeError as err:
        raise ConfigError(f"layer-wise LR decay: {type(model).__name__} has no module {blocks!r}") from err
    n, prefix = len(stack), blocks + "."
    depths: dict[str, int] = {}
    seen_block = False
    for name, _ in model.named_parameters():
        if name.startswith(prefix):
            depths[name] = int(name[len(prefix):].split(".", 1)[0]) + 1
            seen_block = True
        else:
            depths[name] = n + 1 if seen_block else 0
    if not seen_block:
        raise ConfigError(f"layer-wise LR decay: module {blocks!r} of {type(model).__name__} holds no parameter")
    return depths, n


def layerwise_lr_groups(model: nn.Module, base_lr: float, *, decay: float, head_lr: float | None = None,
                        weight_decay: float = 0.05, layer_of: Callable[[str], int], num_layers: int,
                        head_prefix: str = "head") -> list[dict]:
    """Param groups where depth ``d`` of ``num_layers + 1`` gets ``base_lr * decay ** (num_layers + 1 - d)``.

    The head (parameters whose name starts with ``head_prefix``) gets ``head_lr``
    (default ``base_lr``). Vectors (biases, norms) get no weight decay. Each group
    carries ``lr_scale`` relative to ``base_lr``, which the engine keeps under its schedule.

    Raises:
        ConfigError: ``decay`` outside (0, 1], or a non-positive learning rate.
    """
    if not 0 < decay <= 1:
        raise ConfigError(f"layer-wise LR decay must be in (0, 1], got {decay}")
    if base_lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise ConfigError(f"learning rates must be > 0, got base_lr={base_lr}, head_lr={head_lr}")
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim < 2
        if name.startswith(head_prefix):
            key, scale = ("head", no_wd), (head_lr or base_lr) / base_lr
        else:
            depth = layer_of(name)
            key, scale = (f"layer{depth}", no_wd), decay ** (num_layers + 1 - depth)
        g = groups.setdefault(key, {"params": [], "lr_scale": scale, "lr": base_lr * scale,
                                    "weight_decay": 0.0 if no_wd else weight_decay,
                                    "name": f"{key[0]}{'.no_decay' if no_wd else ''}"})
        g["params"].append(p)
    return list(groups.values())
