"""Ultrasound explanations: Grad-CAM and integrated-gradients overlays per image, classification and segmentation.

- Classification (a fine-tune of the backbone, or a classification head of the multi-task model): Grad-CAM on
  the deepest backbone stage (what the head pools), target the class.
- Segmentation (a segmentation head of :class:`~foundation.modalities.ultrasound.model.UltrasoundMTL`): the
  head as ``image -> logits [B, C, S, S]`` (:class:`SegmentationOutput`); Grad-CAM on the head's conv tower
  with pytorch-grad-cam's ``SemanticSegmentationTarget`` (the class's logits summed over the predicted region);
  integrated gradients of the same scalar (:class:`RegionScore`).

Ground truth (:func:`pointing_game`): a hit when the attribution maximum lies inside the structure's mask
(Zhang et al., "Top-down Neural Attention by Excitation Backprop", https://arxiv.org/abs/1608.00507); images
without a structure are not scored.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.explain.figure import pyplot, save_figure

__all__ = ["RegionScore", "SegmentationOutput", "classification_layer", "plot_overlays", "pointing_game", "to_map"]


class SegmentationOutput(nn.Module):
    """``image [B, 3, S, S]`` -> the segmentation logits ``[B, C, S, S]`` of one task of a multi-task model."""

    def __init__(self, mtl: nn.Module, task_id: str) -> None:
        super().__init__()
        if task_id not in getattr(mtl, "table", {}) or mtl.table[task_id].type != "segmentation":
            seg = [t for t, s in getattr(mtl, "table", {}).items() if s.type == "segmentation"]
            raise ConfigError(f"explain: {task_id!r} is not a segmentation task of the model; its segmentation "
                              f"tasks: {', '.join(seg) or 'none'}")
        self.mtl, self.task_id = mtl, task_id

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, fpn = self.mtl.features(image)
        return self.mtl.heads[self.task_id](fpn)


class RegionScore(nn.Module):
    """``image -> [B, 1]``: logits of ``category`` summed over a fixed region ``[B, S, S]`` (Grad-CAM's segmentation
    target as a scalar, so captum can attribute it)."""

    def __init__(self, seg: nn.Module, category: int, region: torch.Tensor) -> None:
        super().__init__()
        self.seg, self.category = seg, category
        self.register_buffer("region", region.float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.seg(image)[:, self.category]  # [B, S, S]
        region = self.region.repeat(image.shape[0] // self.region.shape[0], 1, 1)
        return (logits * region).sum((1, 2))[:, None]


def classification_layer(encoder: nn.Module) -> nn.Module:
    """The deepest stage of the ultrasound backbone (its output is what a classification head pools)."""
    blocks = getattr(getattr(encoder, "backbone", None), "blocks", None)
    if blocks is None:
        raise ConfigError(f"Grad-CAM: {type(encoder).__name__} has no convolutional backbone with blocks; Grad-CAM "
                          "applies to the ultrasound model")
    return blocks[-1]


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float, int]:
    """(hit rate, images scored): is each map's maximum ``[B, H, W]`` inside its mask ``[B, H, W]`` (> 0)?"""
    hits, n = 0, 0
    for m, g in zip(maps, masks):
        if not (g > 0).any():
            continue
        idx = int(torch.argmax(m.reshape(-1)))
        hits += bool((g > 0).reshape(-1)[idx])
        n += 1
    return (hits / n if n else float("nan")), n


def plot_overlays(path: str | Path, images: torch.Tensor, maps: dict[str, torch.Tensor],
                  captions: list[str] | None = None, masks: torch.Tensor | None = None) -> Path:
    """A grid: one row per image (the image, then one overlay per method; the mask outline when given).

    Args:
        images: ``[B, 3, S, S]`` in [0, 1]; maps: method -> ``[B, S, S]`` (any scale; |.| normalised per image).
    """
    plt = pyplot()
    B = images.shape[0]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(B, cols, figsize=(1.7 * cols, 1.7 * B + 0.3), squeeze=False)
    for i in range(B):
        img = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[i, 0].imshow(img)
        if masks is not None and (masks[i] > 0).any():
            axes[i, 0].contour((masks[i] > 0).numpy(), levels=[0.5], colors="lime", linewidths=0.8)
        axes[i, 0].set_ylabel(captions[i] if captions else f"image {i}", fontsize=7)
        for j, (name, m) in enumerate(maps.items(), start=1):
            a = m[i].abs().numpy()
            a = a / a.max() if a.max() > 0 else a
            axes[i, j].imshow(img.mean(-1), cmap="gray")
            axes[i, j].imshow(a, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if masks is not None and (masks[i] > 0).any():
                axes[i, j].contour((masks[i] > 0).numpy(), levels=[0.5], colors="lime", linewidths=0.6)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)


def to_map(attr: torch.Tensor) -> torch.Tensor:
    """Pixel attributions ``[B, 3, S, S]`` -> ``[B, S, S]`` (sum of |.| over colour channels); maps pass through."""
    return attr.abs().sum(1) if attr.dim() == 4 else attr

