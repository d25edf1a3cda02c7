"""Task heads of the multi-task ultrasound model: segmentation, classification, single-box detection, keypoints.

- Segmentation: conv-BN-act-conv on the stride-4 FPN map, logits upsampled to the input.
- Classification: global average pool of the deepest backbone map, dropout, linear.
- Detection (one box per image): a CenterNet-style centre heatmap on the FPN map whose
  soft-argmax gives the box centre; width and height are read at the centre through the
  same softmax weights; an objectness logit from the pooled map says whether there is an
  object at all (negatives train it). (Zhou et al., "Objects as Points",
  https://arxiv.org/abs/1904.07850; single-box soft-argmax variant: ours.)
- Keypoints: one heatmap per point with soft-argmax (differentiable spatial to numerical
  transform; Nibali et al., "Numerical Coordinate Regression with Convolutional Neural
  Networks", https://arxiv.org/abs/1801.07372).

Coordinates are normalised to [0, 1] of the network input, x before y.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["soft_argmax", "SegmentationHead", "ClassificationHead", "DetectionHead", "KeypointHead"]


def soft_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected (x, y) under the softmax of each map.

    Args:
        logits: ``[B, P, h, w]`` heatmap logits.

    Returns:
        ``(coords [B, P, 2]`` in [0, 1] (pixel centres at ``(i + 0.5) / w``), ``weights [B, P, h, w])``.
    """
    B, P, h, w = logits.shape
    weights = logits.float().flatten(2).softmax(-1).view(B, P, h, w)  # [B, P, h*w] -> [B, P, h, w]
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) / h
    x = (weights.sum(2) * xs).sum(-1)  # [B, P, w] -> [B, P]
    y = (weights.sum(3) * ys).sum(-1)  # [B, P, h] -> [B, P]
    return torch.stack([x, y], dim=-1), weights


def _tower(in_ch: int, hidden: int, act_layer: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), act_layer())


class SegmentationHead(nn.Module):
    """FPN map ``[B, D, h, w]`` -> class logits ``[B, C, S, S]`` (``S = h * upsample``)."""

    def __init__(self, in_ch: int, num_classes: int, hidden: int = 64, upsample: int = 4,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.tower = _tower(in_ch, hidden, act_layer)
        self.out = nn.Conv2d(hidden, num_classes, 1)
        self.up = nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.out(self.tower(x)))


class ClassificationHead(nn.Module):
    """Deepest map ``[B, C5, h, w]`` -> logits ``[B, num_classes]``."""

    def __init__(self, in_ch: int, num_classes: int, drop: float = 0.2) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean(dim=(2, 3))))


class DetectionHead(nn.Module):
    """FPN map ``[B, D, h, w]`` -> ``{"box": [B, 4]`` (x_min, y_min, x_max, y_max in [0, 1]), ``"objectness": [B]}``."""

    def __init__(self, in_ch: int, hidden: int = 64, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.tower = _tower(in_ch, hidden, act_layer)
        self.center = nn.Conv2d(hidden, 1, 1)
        self.size = nn.Conv2d(hidden, 2, 1)
        self.objectness = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.tower(x)
        center, weights = soft_argmax(self.center(f))  # [B, 1, 2], [B, 1, h, w]
        size = (self.size(f).sigmoid().float() * weights).sum(dim=(2, 3))  # [B, 2, h, w] -> [B, 2]
        c = center[:, 0]
        box = torch.cat([c - size / 2, c + size / 2], dim=-1)
        return {"box": box, "objectness": self.objectness(f.mean(dim=(2, 3)))[:, 0]}


class KeypointHead(nn.Module):
    """FPN map ``[B, D, h, w]`` -> ``{"points": [B, P, 2]`` in [0, 1], ``"heatmaps": [B, P, h, w]}``."""

    def __init__(self, in_ch: int, num_points: int, hidden: int = 64, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.tower = _tower(in_ch, hidden, act_layer)
        self.out = nn.Conv2d(hidden, num_points, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heatmaps = self.out(self.tower(x))
        points, _ = soft_argmax(heatmaps)
        return {"points": points, "heatmaps": heatmaps}
