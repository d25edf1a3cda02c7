"""Image and mask reading: PNG/JPEG grayscale and RGB, DICOM through pydicom's shipped ultrasound frames."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from foundation.errors import DataError
from foundation.modalities.ultrasound.images import image_size, read_image, read_mask


def test_png_gray_and_rgb_and_jpeg(tmp_path):
    gray = (np.arange(12 * 10) % 256).astype(np.uint8).reshape(12, 10)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.shape == (12, 10, 3) and np.allclose(got[..., 1], gray / 255.0)
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    assert np.allclose(read_image(tmp_path / "c.png"), rgb / 255.0)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.jpg", quality=100)
    assert read_image(tmp_path / "c.jpg").shape == (9, 7, 3)
    assert image_size(tmp_path / "c.png") == (9, 7)


def test_dicom_ultrasound_frames():
    from pydicom import examples  # a dependency of the ultrasound modality (DICOM images, demo backgrounds)

    path = examples._get_path("rgb_color")
    expected = examples.rgb_color.pixel_array / 255.0
    got = read_image(path)
    assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-6)
    assert image_size(path) == expected.shape[:2]
    with pytest.raises(DataError, match="30 frames"):
        read_image(examples._get_path("ybr_color"))


def test_mask_values_checked(tmp_path):
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:4] = 3
    Image.fromarray(m, "L").save(tmp_path / "m.png")
    assert (read_mask(tmp_path / "m.png", 4) == m).all()
    with pytest.raises(DataError, match=r"mask value 3 outside \[0, 2\]"):
        read_mask(tmp_path / "m.png", 3)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8), "RGB").save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="single-channel PNG"):
        read_mask(tmp_path / "rgb.png", 2)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")
