"""Geometry: resize, letterbox, zoom and flips move pixels, boxes and keypoints together; the inverse maps back."""
from __future__ import annotations

import torch

from foundation.modalities.ultrasound.augment import fit_geometry, random_geometry, unwarp, warp


def _dot(h: int, w: int, x: int, y: int) -> torch.Tensor:
    img = torch.zeros(1, h, w)
    img[0, y, x] = 1.0
    return img


def test_points_follow_the_pixels_through_random_geometries():
    g0 = torch.Generator().manual_seed(0)
    for keep_aspect in (False, True):
        base = fit_geometry(48, 80, 64, keep_aspect)
        for _ in range(20):
            g = random_geometry(base, flip=True, zoom=0.3, shift=0.1, generator=g0)
            x, y = 30, 20
            # a 5x5 blob, so bilinear resampling keeps a clear maximum at its centre
            img = torch.nn.functional.max_pool2d(_dot(48, 80, x, y), 5, 1, 2)
            out = warp(img, g)[0]
            if out.max() < 0.5:
                continue  # zoomed out of view
            where = torch.nonzero(out == out.max()).float().mean(0)  # (row, col) of the brightest pixels
            expected = g.to_net(torch.tensor([x + 0.5, y + 0.5]))  # the pixel centre
            assert torch.allclose(where.flip(0) + 0.5, expected, atol=1.5)


def test_box_corners_reordered_after_flip_and_round_trip():
    base = fit_geometry(40, 60, 32, keep_aspect=True)
    flipped = base.then(-1.0, 32.0, 1.0, 0.0)
    box = torch.tensor([10.0, 5.0, 20.0, 30.0])
    net = flipped.box_to_net(box)
    assert net[0] < net[2] and net[1] < net[3]
    assert torch.allclose(flipped.box_to_orig(net), box, atol=1e-5)
    pts = torch.tensor([[3.0, 4.0], [59.0, 39.0]])
    assert torch.allclose(flipped.to_orig(flipped.to_net(pts)), pts, atol=1e-5)


def test_unwarp_inverts_warp_on_smooth_maps():
    g = fit_geometry(30, 50, 64, keep_aspect=True)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 30), torch.linspace(0, 1, 50), indexing="ij")
    img = (xx + 2 * yy)[None]
    back = unwarp(warp(img, g), g)
    assert torch.allclose(back[:, 2:-2, 2:-2], img[:, 2:-2, 2:-2], atol=0.03)


def test_keep_inside_keeps_points_in_view():
    base = fit_geometry(64, 64, 64, keep_aspect=False)
    corner = torch.tensor([[1.0, 1.0], [63.0, 63.0]])
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        g = random_geometry(base, flip=False, zoom=0.5, shift=0.2, generator=gen, keep_inside=corner)
        p = g.to_net(corner)
        assert ((p >= 0) & (p <= 64)).all() and g.sx > 0
