"""Layer-wise learning-rate decay (BEiT/ELECTRA style) as optimizer param groups."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from foundation.errors import ConfigError

__all__ = ["layerwise_lr_groups", "block_index"]


def block_index(name: str, num_layers: int, prefix: str = "blocks.") -> int:
    """Depth of parameter ``name``: 0 for embeddings, ``i + 1`` inside ``blocks.i``, ``num_layers + 1`` after.

    Args:
        name: a parameter name such as ``"encoder.blocks.3.attn.qkv.weight"``.
        num_layers: number of blocks.
        prefix: the path segment that precedes the block index.
    """
    if prefix in name:
        tail = name.split(prefix, 1)[1]
        return int(tail.split(".", 1)[0]) + 1
    if any(k in name for k in ("embed", "pos", "token", "patch")):
        return 0
    return num_layers + 1


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
