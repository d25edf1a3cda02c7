"""Issue 15 for fMRI: truncated NIfTI files and degenerate (flat) scans never crash a prepare or pass silently."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from foundation.errors import DataError
from foundation.modalities.fmri.dataset import FMRIWindows, FMRIWindowsConfig
from foundation.modalities.fmri.reader import read_scan
from foundation.modalities.fmri.saliency import top_k_windows

FUNC = str(data_path) + "/functional.nii"  # 17 x 21 x 3 x 20 int16, TR 2 s


def _config(src, cache, **kw) -> FMRIWindowsConfig:
    base = dict(source=str(src), cache_dir=str(cache), grid=(4, 20, 16), voxel_size=0, tr=2.0, mask="compute",
                window=4, top_k=2, unit_size=(2, 2, 4, 4), saliency_pool=2)
    return FMRIWindowsConfig(**{**base, **kw})


def _constant(path, value=100.0):
    img = nib.Nifti1Image(np.full((17, 21, 3, 20), value, np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, str(path))


@pytest.mark.parametrize("value", [100.0, 0.0])
def test_a_flat_scan_is_left_out_and_the_rest_prepares(tmp_path, value):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FUNC, src / "good.nii")
    _constant(src / "flat.nii.gz", value)
    cfg = _config(src, tmp_path / "cache")
    report = FMRIWindows.prepare(cfg)  # crashed with IndexError in the saliency stage
    reasons = {e["source"].split("/")[-1]: e.get("reason", "") for e in report["sources"]}
    assert report["n_kept"] == 1 and "flat" in reasons["flat.nii.gz"] and "flat.nii.gz" in reasons["flat.nii.gz"]
    ds = FMRIWindows(cfg)
    assert len(ds) == 2 and ds[0]["x"].shape == (1, 4, 4, 20, 16)


def test_saliency_pooling_that_leaves_no_parcel_leaves_the_scan_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FUNC, src / "good.nii")
    cfg = _config(src, tmp_path / "cache", saliency_pool=8)  # 8^3 blocks: none fits the 3-slice scan
    _constant(src / "flat.nii.gz")
    with pytest.raises(DataError) as err:
        FMRIWindows.prepare(cfg)  # no scan is usable: the build lists why for each
    assert "good.nii: saliency pooling over 8^3-voxel blocks leaves no parcel" in str(err.value)
    assert "flat.nii.gz: the scan is flat" in str(err.value)
    ok = FMRIWindows.prepare(_config(src, tmp_path / "cache2", saliency_pool=2))
    assert ok["n_kept"] == 1  # smaller parcels fit the same scan


def test_top_k_windows_names_the_scan_when_no_parcel_is_left():
    vol, mask = np.zeros((20, 4, 8, 8), np.float32), np.ones((4, 8, 8), bool)
    with pytest.raises(DataError, match="scan-x.nii: saliency pooling"):
        top_k_windows(vol, mask, 4, 2, pool=2, where="scan-x.nii")


def _cut(src, dst, keep_bytes):
    dst.write_bytes(src.read_bytes()[:keep_bytes])
    return dst


def test_a_truncated_nifti_names_what_is_missing(tmp_path):
    full = (tmp_path / "f.nii")
    shutil.copy(FUNC, full)
    vol = 17 * 21 * 3 * 2
    cut = _cut(full, tmp_path / "cut.nii", 352 + 12 * vol + 100)  # 12 whole volumes of 20, and a bit
    with pytest.raises(DataError, match=r"cut\.nii: truncated.*20 volumes.*missing 8 of 20 volumes.*allow_truncated"):
        read_scan(cut)
    scan = read_scan(cut, allow_truncated=True)
    assert scan.n_times == 12 and "8 of 20 volumes missing" in scan.truncated and "16 s lost" in scan.truncated
    np.testing.assert_array_equal(scan.data, read_scan(full).data[..., :12])


def test_a_cut_nii_gz_is_refused_or_read_in_part_and_reported(tmp_path):
    img = nib.load(FUNC)
    gz = tmp_path / "full.nii.gz"
    nib.save(img, str(gz))
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FUNC, src / "good.nii")
    _cut(gz, src / "cut.nii.gz", int(gz.stat().st_size * 0.7))
    report = FMRIWindows.prepare(_config(src, tmp_path / "c1"))
    left = [e for e in report["sources"] if e["status"] == "left_out"]
    assert len(left) == 1 and "cut.nii.gz: truncated" in left[0]["reason"]
    report = FMRIWindows.prepare(_config(src, tmp_path / "c2", allow_truncated=True))
    cut = next(e for e in report["sources"] if e["source"].endswith("cut.nii.gz"))
    assert report["n_kept"] == 2 and cut["status"] == "kept" and "volumes missing" in cut["notes"][0]
    assert report["n_noted"] == 1
