"""Feature pyramid network over a backbone's multi-scale maps.

Lin et al., "Feature Pyramid Networks for Object Detection", https://arxiv.org/abs/1612.03144:
1x1 lateral convolutions to a common width, a top-down pathway (nearest upsampling + add),
then a 3x3 convolution on each merged level.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPN"]


class FPN(nn.Module):
    """Maps ``[B, C_i, H / s_i, W / s_i]`` (finest first) -> the same number of maps ``[B, D, H / s_i, W / s_i]``.

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: the common width D.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.out_channels = out_channels

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into the next finer level
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.smooth, laterals)]
