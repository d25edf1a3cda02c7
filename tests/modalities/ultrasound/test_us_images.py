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


def _gray_dicom(path, arr, photometric, **elements):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("window", [True, False])
def test_dicom_gray_follows_pydicoms_lut_pipeline(tmp_path, photometric, window):
    """Rescale (modality LUT), window (VOI LUT) and MONOCHROME1 (INVERSE presentation) as pydicom applies them,
    scaled by the 12-bit stored range, not by the image's own extremes."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = np.random.default_rng(0).integers(900, 1400, (6, 5))  # far from 0 and 4095: own extremes would mislead
    extra = dict(RescaleSlope=2, RescaleIntercept=-1024, RescaleType="HU")
    if window:
        extra.update(WindowCenter=1276, WindowWidth=1200)  # covers the image's 776..1776 HU
    ds = _gray_dicom(tmp_path / "x.dcm", arr, photometric, **extra)
    got = read_image(tmp_path / "x.dcm")[..., 0]
    ramp = np.arange(4096)
    values = apply_voi_lut(apply_modality_lut(np.concatenate([arr.ravel(), ramp]), ds), ds).astype(np.float64)
    lo, hi = values[arr.size:].min(), values[arr.size:].max()
    expected = ((values[: arr.size] - lo) / (hi - lo)).reshape(arr.shape)
    if window:
        assert (lo, hi) == (-1024, 2 * 4095 - 1024)  # pydicom's windowing output: the rescaled 12-bit range
    if photometric == "MONOCHROME1":
        expected = 1 - expected  # INVERSE over the full range: the darkest stored value shows white
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert 0.01 < got.min() and got.max() < 0.99  # the image's own extremes are not forced to black / white


def test_dicom_presentation_lut_shape_is_honoured(tmp_path):
    arr = np.arange(30).reshape(6, 5) * 100
    _gray_dicom(tmp_path / "inv.dcm", arr, "MONOCHROME2", PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(read_image(tmp_path / "inv.dcm")[..., 0], 1 - arr / 4095, atol=1e-6)
    _gray_dicom(tmp_path / "id.dcm", arr, "MONOCHROME1", PresentationLUTShape="IDENTITY")
    np.testing.assert_allclose(read_image(tmp_path / "id.dcm")[..., 0], arr / 4095, atol=1e-6)
