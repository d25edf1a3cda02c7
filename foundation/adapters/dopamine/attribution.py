"""Neuron-level attribution of a Dopamine adapter: which units fire, per class, on a data loader.

A unit fires on a sample when its pre-gate value exceeds its threshold
(h > tau; averaged over the sample's tokens or spatial positions; samples run one at a time,
so packed or flattened token layouts need no unpacking). The firing rate per class is
the mean over the samples of that class. Written as a CSV (one row per layer
and unit), a markdown summary (per class: share of units firing more often
than not, and the most class-specific units) and a PNG heatmap (Agg backend).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from foundation.adapters.dopamine.model import DopamineModel
from foundation.errors import DataError

__all__ = ["neuron_attribution", "write_attribution"]


@torch.no_grad()
def neuron_attribution(model: DopamineModel, loader: Iterable, num_classes: int) -> dict[str, torch.Tensor]:
    """Firing rate of every gated unit, per class.

    Args:
        model: the Dopamine-wrapped model (run in eval mode here; its mode is restored afterwards).
        loader: yields (inputs, labels) with integer labels [B] in [0, num_classes).
        num_classes: number of classes C.

    Returns:
        layer name -> [C, D] firing rates in [0, 1] (NaN for a class with no sample); gated layers that the
        forward pass never reached (a pretraining decoder under a task head) are left out.

    Raises:
        DataError: a label is outside [0, num_classes), or the loader is empty.
    """
    was_training = model.training
    model.eval()
    layers = dict(model.dopamine_layers())
    sums = {n: torch.zeros(num_classes, layer.out_features, dtype=torch.float64) for n, layer in layers.items()}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    seen: set[str] = set()
    try:
        for layer in layers.values():
            layer.recorded = []
        for inputs, labels in loader:
            labels = torch.as_tensor(labels).long().reshape(-1)
            bad = labels[(labels < 0) | (labels >= num_classes)]
            if bad.numel():
                raise DataError(f"neuron_attribution: label {int(bad[0])} outside [0, {num_classes}); pass the "
                                f"right num_classes or fix the loader's labels")
            for i, label in enumerate(labels.tolist()):  # one sample per forward: any token layout (packed,
                model(_sample(inputs, i, len(labels)))      # flattened windows, channels) averages per sample
                counts[label] += 1
                for name, layer in layers.items():
                    if not layer.recorded:  # a gated layer off this forward path (e.g. a pretraining decoder)
                        continue
                    seen.add(name)
                    sums[name][label] += torch.stack(layer.recorded).to(torch.float64).mean(0)  # [D]
                    layer.recorded.clear()
    finally:
        for layer in layers.values():
            layer.recorded = None
        model.train(was_training)
    if counts.sum() == 0:
        raise DataError("neuron_attribution: the loader yielded no sample")
    return {n: (s / counts[:, None]).to(torch.float32) for n, s in sums.items() if n in seen}


def _sample(inputs: Any, i: int, batch_size: int) -> Any:
    """Sample ``i`` of a batch, keeping the batch dimension (a tensor or a dict of batch entries)."""
    if isinstance(inputs, dict):
        return {k: (v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch_size else v)
                for k, v in inputs.items()}
    return inputs[i:i + 1]


def write_attribution(rates: dict[str, torch.Tensor], folder: str | os.PathLike, top: int = 5) -> dict[str, Path]:
    """Write ``attribution.csv``, ``attribution.md`` and ``attribution.png`` into ``folder``.

    Args:
        rates: output of :func:`neuron_attribution`.
        folder: destination (created).
        top: how many most class-specific units to list per class and layer.

    Returns:
        {"csv": path, "markdown": path, "png": path}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = next(iter(rates.values())).shape[0]
    paths = {"csv": out / "attribution.csv", "markdown": out / "attribution.md", "png": out / "attribution.png"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["layer", "unit", *[f"class_{c}" for c in range(num_classes)]])
        for name, r in rates.items():
            for j in range(r.shape[1]):
                writer.writerow([name, j, *[f"{float(v):.4f}" for v in r[:, j]]])
    lines = ["# Dopamine neuron attribution", "", "Firing rate = share of samples of a class on which h > tau.", ""]
    for name, r in rates.items():
        lines += [f"## {name}", "", "| class | units firing > 50% | most class-specific units (rate) |",
                  "|---|---|---|"]
        specificity = r - r.nanmean(0, keepdim=True)  # [C, D]
        for c in range(num_classes):
            idx = torch.argsort(specificity[c].nan_to_num(-1.0), descending=True)[:top]
            units = ", ".join(f"{int(j)} ({float(r[c, j]):.2f})" for j in idx)
            lines.append(f"| {c} | {float((r[c] > 0.5).float().mean()):.1%} | {units} |")
        lines.append("")
    paths["markdown"].write_text("\n".join(lines))
    fig, axes = plt.subplots(len(rates), 1, figsize=(10, 1.2 + 0.35 * num_classes * len(rates)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], rates.items()):
        im = ax.imshow(r.numpy(), aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("class")
        ax.set_xlabel("unit")
        fig.colorbar(im, ax=ax, label="firing rate")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
