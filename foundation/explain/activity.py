"""Layer activity: how often each residual layer changes the residual stream materially, and skipping the idle ones.

In the manner of the layer-activity studies of language models (Csordas et al., "Do Language Models Use Their
Depth Efficiently?", https://arxiv.org/abs/2505.13898; Gromov et al., "The Unreasonable Ineffectiveness of the
Deeper Layers", https://arxiv.org/abs/2403.17887): for a residual unit ``y = x + f(x)`` the relative change of
one input's stream is ``||y - x|| / ||x||`` over its tokens (Frobenius norms per sample). A unit is *active*
on an input when that change exceeds ``threshold``; its activity is the share of inputs on which it is.

Residual units are found by type: the suite's transformer ``Block`` (packed tokens ``[K, D]`` with
``cu_seqlens``; per-sample norms over each sample's tokens), Hiera blocks that keep their width and token
count (``[U, T, D]`` with ``units_cu``), and timm blocks with an identity shortcut (``has_skip``; ``[B, C, H, W]``).

:func:`skip_layers` replaces the chosen units by the identity (their shortcut alone) for inference;
:func:`skip_report` measures the accuracy and the time that costs or saves.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foundation.errors import ConfigError

__all__ = ["layer_activity", "plot_activity", "residual_units", "skip_layers", "skip_report"]


def _is_residual(module: nn.Module) -> bool:
    from foundation.layers.block import Block
    from foundation.modalities.fmri.hiera4d import HieraBlock

    if isinstance(module, Block):
        return True
    if isinstance(module, HieraBlock):
        return module.dim == module.dim_out and module.attn.q_stride == 1
    return bool(getattr(module, "has_skip", False))


def residual_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every residual unit of ``model`` that a forward pass of the encoder reaches, in order.

    Decoder and predictor stacks (pretraining only) are left out by name (``decoder``, ``predictor``, ``target``).
    """
    skip = ("decoder", "predictor", "target.")
    units = [(n, m) for n, m in model.named_modules() if n and _is_residual(m) and not any(s in n for s in skip)]
    if not units:
        raise ConfigError(f"layer activity: {type(model).__name__} has no residual unit the suite knows (transformer "
                          "Block, width-keeping Hiera block, timm block with a skip connection)")
    return units


def _segments(module: nn.Module, args: tuple, x: torch.Tensor) -> torch.Tensor:
    """Sample id of every row of ``x`` (dim 0)."""
    from foundation.kernels.packing import sample_ids
    from foundation.layers.block import Block
    from foundation.modalities.fmri.hiera4d import HieraBlock

    if isinstance(module, (Block, HieraBlock)) and len(args) > 1 and torch.is_tensor(args[1]):
        return sample_ids(args[1]).to(x.device).long()
    return torch.arange(x.shape[0], device=x.device)


def _relative_change(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    seg = _segments(module, args, x)
    n = int(seg.max()) + 1
    d = (out.float() - x.float()).flatten(1).square().sum(1)
    s = x.float().flatten(1).square().sum(1)
    num = torch.zeros(n, device=x.device).index_add_(0, seg, d)
    den = torch.zeros(n, device=x.device).index_add_(0, seg, s)
    return (num / den.clamp(min=1e-12)).sqrt()  # [B]


@torch.no_grad()
def layer_activity(model: nn.Module, batches: Iterable[Any], threshold: float = 0.1,
                   forward: Any = None) -> list[dict[str, Any]]:
    """Per residual unit: the share of inputs it changes by more than ``threshold`` (relative), and the mean change.

    Args:
        model: any suite model whose ``forward`` takes the batches (a fine-tune takes a batch dict).
        batches: inputs for ``model(batch)``.
        threshold: relative change ``||f(x)|| / ||x||`` that counts as material.
        forward: how a batch runs (default ``model(batch)``; a pretrained encoder runs ``forward_features``).

    Returns:
        One row per unit, in forward order: ``layer``, ``active_share``, ``mean_change``, ``n_inputs``.
    """
    if threshold <= 0:
        raise ConfigError(f"layer activity: threshold must be > 0, got {threshold}")
    units = residual_units(model)
    changes: dict[str, list[torch.Tensor]] = {n: [] for n, _ in units}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: changes[n].append(_relative_change(mod, args, out)))
             for n, m in units]
    model.eval()
    try:
        for batch in batches:
            (forward or model)(batch)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, _ in units:
        c = torch.cat(changes[name]) if changes[name] else torch.zeros(0)
        rows.append({"layer": name, "active_share": float((c > threshold).float().mean()) if len(c) else float("nan"),
                     "mean_change": float(c.mean()) if len(c) else float("nan"), "n_inputs": len(c)})
    return rows


class _Skip(nn.Module):
    """The identity in place of a residual unit: ``x`` (its shortcut) whatever else is passed."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


@contextlib.contextmanager
def skip_layers(model: nn.Module, names: Iterable[str]) -> Iterator[list[str]]:
    """Within the block, the named residual units are replaced by the identity; restored on exit.

    Raises:
        ConfigError: a name that is no residual unit of ``model`` (lists the valid ones).
    """
    units = dict(residual_units(model))
    names = list(names)
    bad = [n for n in names if n not in units]
    if bad:
        raise ConfigError(f"skip layers: {bad} are not residual units of the model; valid: {', '.join(units)}")
    swapped = []
    try:
        for n in names:
            parent_name, _, child = n.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _Skip()) if not child.isdigit() else parent.__setitem__(int(child), _Skip())
            swapped.append((parent, child, units[n]))
        yield names
    finally:
        for parent, child, module in swapped:
            setattr(parent, child, module) if not child.isdigit() else parent.__setitem__(int(child), module)


@torch.no_grad()
def _accuracy_and_time(model: nn.Module, batches: list[tuple[Any, torch.Tensor]], repeats: int) -> tuple[float, float]:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        preds = [model(x).argmax(-1) for x, _ in batches]
        best = min(best, time.perf_counter() - t0)
    correct = sum(int((p == y).sum()) for p, (_, y) in zip(preds, batches))
    return correct / sum(len(y) for _, y in batches), best


def skip_report(model: nn.Module, batches: list[tuple[Any, torch.Tensor]], activity: list[dict[str, Any]],
                thresholds: Iterable[float] = (0.25, 0.5, 0.75), repeats: int = 3) -> list[dict[str, Any]]:
    """Accuracy and inference time when the units whose ``active_share`` is below each threshold are skipped.

    Args:
        model: a fine-tune (classification logits).
        batches: ``(inputs, labels)`` pairs; the same batches for every setting.
        activity: rows of :func:`layer_activity`.
        thresholds: skip every unit active on fewer than this share of inputs.
        repeats: timings are the best of this many passes.

    Returns:
        One row per setting (the first: nothing skipped): ``threshold``, ``skipped``, ``accuracy``, ``seconds``,
        ``time_ratio`` (time / time with nothing skipped).
    """
    model.eval()
    acc0, t0 = _accuracy_and_time(model, batches, repeats)
    rows = [{"threshold": 0.0, "skipped": 0, "layers": "", "accuracy": acc0, "seconds": t0, "time_ratio": 1.0}]
    for thr in thresholds:
        idle = [r["layer"] for r in activity if r["active_share"] < thr]
        with skip_layers(model, idle):
            acc, t = _accuracy_and_time(model, batches, repeats)
        rows.append({"threshold": float(thr), "skipped": len(idle), "layers": " ".join(idle), "accuracy": acc,
                     "seconds": t, "time_ratio": t / t0})
    return rows


def plot_activity(path: str | Path, rows: list[dict[str, Any]], threshold: float, title: str = "") -> Path:
    """Bar plot of each unit's active share (and its mean relative change on a second axis)."""
    from foundation.explain.figure import pyplot, save_figure

    plt = pyplot()
    names = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(rows) + 2), 3.2))
    idx = np.arange(len(rows))
    ax.bar(idx, [r["active_share"] for r in rows], color="tab:blue", label="active share")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"share of inputs with change > {threshold:g}")
    ax2 = ax.twinx()
    ax2.plot(idx, [r["mean_change"] for r in rows], "o-", color="tab:red", label="mean relative change")
    ax2.set_ylabel("mean ||f(x)|| / ||x||", color="tab:red")
    ax.set_xticks(idx)
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_title(title or "layer activity", fontsize=9)
    return save_figure(fig, path)
