"""Geometry (resize / letterbox / zoom / flip as one per-axis affine map) and box-, keypoint-aware augmentation.

Coordinates are continuous pixels: ``x`` in ``[0, W]`` spans the image width, so a box
edge and a keypoint map the same way. The map from original to network pixels is
``net = scale * orig + offset`` per axis (a negative x scale is a horizontal flip).
Images are resampled through :func:`torch.nn.functional.grid_sample` with the inverse
map, which serves resizing, aspect-preserving letterboxing, zoom and flips alike,
and maps predictions back to original pixels for the submission.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = ["Geometry", "fit_geometry", "warp", "unwarp", "random_geometry", "jitter_intensity"]


@dataclass(frozen=True)
class Geometry:
    """``net = scale * orig + offset`` per axis, from an ``height x width`` image to a ``size x size`` input."""

    sx: float
    ox: float
    sy: float
    oy: float
    size: int
    height: int
    width: int

    def to_net(self, xy: torch.Tensor) -> torch.Tensor:
        """Original pixels ``[..., 2]`` (x, y) -> network pixels ``[..., 2]``."""
        return torch.stack([xy[..., 0] * self.sx + self.ox, xy[..., 1] * self.sy + self.oy], dim=-1)

    def to_orig(self, xy: torch.Tensor) -> torch.Tensor:
        """Network pixels ``[..., 2]`` -> original pixels ``[..., 2]``."""
        return torch.stack([(xy[..., 0] - self.ox) / self.sx, (xy[..., 1] - self.oy) / self.sy], dim=-1)

    def box_to_net(self, box: torch.Tensor) -> torch.Tensor:
        """``[4]`` (x_min, y_min, x_max, y_max) original -> network pixels, corners re-ordered after a flip."""
        corners = self.to_net(box.view(2, 2))  # [4] -> [2 corners, 2]
        lo, hi = corners.min(dim=0).values, corners.max(dim=0).values
        return torch.cat([lo, hi])

    def box_to_orig(self, box: torch.Tensor) -> torch.Tensor:
        """``[..., 4]`` network pixels -> original pixels, corners re-ordered."""
        corners = self.to_orig(box.reshape(*box.shape[:-1], 2, 2))  # [..., 4] -> [..., 2, 2]
        return torch.cat([corners.min(dim=-2).values, corners.max(dim=-2).values], dim=-1)

    def then(self, sx: float, ox: float, sy: float, oy: float) -> Geometry:
        """Compose with a further map ``net' = s * net + o`` per axis."""
        return replace(self, sx=self.sx * sx, ox=self.ox * sx + ox, sy=self.sy * sy, oy=self.oy * sy + oy)


def fit_geometry(height: int, width: int, size: int, keep_aspect: bool) -> Geometry:
    """Map an image to ``size x size``: stretched, or letterboxed (aspect kept, centred, zero padding)."""
    if not keep_aspect:
        return Geometry(size / width, 0.0, size / height, 0.0, size, height, width)
    s = size / max(height, width)
    return Geometry(s, (size - s * width) / 2, s, (size - s * height) / 2, size, height, width)


def _grid(g: Geometry, out_h: int, out_w: int, inverse: bool, device: torch.device) -> torch.Tensor:
    """Sampling grid ``[1, out_h, out_w, 2]`` in grid_sample's normalised coordinates (align_corners=False)."""
    ys = torch.arange(out_h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(out_w, device=device, dtype=torch.float32) + 0.5
    if not inverse:  # output is network space: sample the original at to_orig(u, v)
        src_x, src_y = (xs - g.ox) / g.sx, (ys - g.oy) / g.sy
        nx, ny = 2 * src_x / g.width - 1, 2 * src_y / g.height - 1
    else:  # output is original space: sample the network map at to_net(x, y)
        src_x, src_y = xs * g.sx + g.ox, ys * g.sy + g.oy
        nx, ny = 2 * src_x / g.size - 1, 2 * src_y / g.size - 1
    gy, gx = torch.meshgrid(ny, nx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def warp(image: torch.Tensor, g: Geometry, mode: str = "bilinear") -> torch.Tensor:
    """Resample an original-space map ``[C, H, W]`` to network space ``[C, S, S]`` (zeros outside)."""
    x = image[None].float()
    out = F.grid_sample(x, _grid(g, g.size, g.size, False, image.device), mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out[0].to(image.dtype)


def unwarp(net_map: torch.Tensor, g: Geometry, mode: str = "bilinear") -> torch.Tensor:
    """Resample a network-space map ``[C, S, S]`` back to the original ``[C, H, W]`` (border values outside)."""
    out = F.grid_sample(net_map[None].float(), _grid(g, g.height, g.width, True, net_map.device), mode=mode,
                        padding_mode="border", align_corners=False)
    return out[0]


def random_geometry(g: Geometry, *, flip: bool, zoom: float, shift: float, generator: torch.Generator | None = None,
                    keep_inside: torch.Tensor | None = None, tries: int = 8) -> Geometry:
    """A random zoom / shift / horizontal flip applied after ``g`` (in network space).

    Args:
        g: the base geometry (resize or letterbox).
        flip: allow a horizontal flip with probability 0.5 (False for left/right tasks).
        zoom: maximum zoom-in factor minus one (0: none), drawn uniformly in ``[1, 1 + zoom]``.
        shift: maximum shift as a fraction of the size.
        generator: random source.
        keep_inside: original-space points ``[P, 2]`` (box corners, keypoints) that must stay inside the
            network image; zoom and shift are redrawn (up to ``tries`` times, then left out) otherwise.

    Returns:
        The composed :class:`Geometry`.
    """
    S = g.size
    out = g
    for _ in range(tries):
        z = 1.0 + zoom * float(torch.rand((), generator=generator))
        tx, ty = (shift * S * (2 * torch.rand(2, generator=generator) - 1)).tolist()
        # zoom about the centre, then shift: net' = z (net - S/2) + S/2 + t
        cand = g.then(z, S / 2 * (1 - z) + tx, z, S / 2 * (1 - z) + ty)
        if keep_inside is None or keep_inside.numel() == 0:
            out = cand
            break
        p = cand.to_net(keep_inside)
        if bool(((p >= 0) & (p <= S)).all()):
            out = cand
            break
    if flip and float(torch.rand((), generator=generator)) < 0.5:
        out = out.then(-1.0, float(S), 1.0, 0.0)
    return out


def jitter_intensity(image: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and gamma of an image ``[3, S, S]`` in [0, 1]; ``strength`` 0 is identity."""
    if strength <= 0:
        return image
    r = 2 * torch.rand(3, generator=generator) - 1
    gamma = float(torch.exp(r[2] * strength))
    x = image.clamp(0, 1) ** gamma
    mean = x.mean()
    x = (x - mean) * (1 + strength * float(r[1])) + mean + strength * 0.5 * float(r[0])
    return x.clamp(0, 1)
