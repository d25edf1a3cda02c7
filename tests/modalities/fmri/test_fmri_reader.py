"""Reader, preprocessing and cache: nibabel's shipped 4D files, TR units, bad inputs, left-out report."""
from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from foundation.errors import DataError
from foundation.data.cache import DataCache
from foundation.modalities.fmri.cache import FMRICacheBuilder, open_scan, quantize
from foundation.modalities.fmri.preprocess import PreprocessConfig, crop_or_pad, resample_tr, zscore_in_mask
from foundation.modalities.fmri.reader import find_scans, read_scan

EX4D = os.path.join(data_path, "example4d.nii.gz")
FUNC = os.path.join(data_path, "functional.nii")


def _write(path, data, tr=2.0, units=("mm", "sec")):
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units(*units)
    img.header["pixdim"][4] = tr
    nib.save(img, str(path))
    return path


def test_reads_shipped_functional_nii():
    scan = read_scan(FUNC)
    ref = nib.as_closest_canonical(nib.load(FUNC))
    assert scan.data.shape == (17, 21, 3, 20)
    np.testing.assert_array_equal(scan.data, ref.get_fdata(dtype=np.float32))
    assert scan.tr == pytest.approx(2.0) and scan.voxel_size == (4.0, 4.0, 8.0)


def test_example4d_tr_2000_sec_is_read_as_ms_and_said():
    scan = read_scan(EX4D)
    assert scan.tr == pytest.approx(2.0)
    assert "assumed milliseconds" in scan.tr_note
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")  # canonical orientation (source is LAS)


def test_msec_units_and_bids_sidecar(tmp_path):
    f = _write(tmp_path / "a_bold.nii.gz", np.random.rand(4, 4, 4, 6), tr=1500.0, units=("mm", "msec"))
    assert read_scan(f).tr == pytest.approx(1.5)
    (tmp_path / "a_bold.json").write_text(json.dumps({"RepetitionTime": 0.8}))
    s = read_scan(f)
    assert s.tr == pytest.approx(0.8) and "sidecar" in s.tr_note


def test_bids_tree_lists_func_bold_only(tmp_path):
    (tmp_path / "dataset_description.json").write_text("{}")
    for sub in ("sub-01", "sub-02"):
        (tmp_path / sub / "func").mkdir(parents=True)
        (tmp_path / sub / "anat").mkdir(parents=True)
        _write(tmp_path / sub / "func" / f"{sub}_task-rest_bold.nii.gz", np.random.rand(3, 3, 3, 4))
        _write(tmp_path / sub / "anat" / f"{sub}_T1w.nii.gz", np.random.rand(3, 3, 3, 1))
    assert [p.parent.parent.name for p in find_scans(tmp_path)] == ["sub-01", "sub-02"]


@pytest.mark.parametrize("case, match", [
    ("3d", "expected a 4D"),
    ("truncated", "truncated|cannot read"),
    ("nan", "NaN/inf"),
    ("tr", "outside"),
])
def test_bad_inputs_raise_dataerror_naming_file(tmp_path, case, match):
    f = tmp_path / f"{case}.nii.gz"
    if case == "3d":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(f))
    elif case == "truncated":
        _write(f, np.random.rand(8, 8, 8, 10))
        raw = f.read_bytes()
        f.write_bytes(raw[: len(raw) // 2])
    elif case == "nan":
        d = np.random.rand(4, 4, 4, 5)
        d[1, 1, 1, 3] = np.nan
        _write(f, d)
    else:
        _write(f, np.random.rand(4, 4, 4, 5), tr=0.001)
    with pytest.raises(DataError, match=match) as info:
        read_scan(f)
    assert str(f) in str(info.value)


def test_resample_tr_linear_closed_form():
    t = np.arange(10, dtype=np.float32)
    out = resample_tr(3 * t[None] + 1, tr=2.0, new_tr=1.0)  # linear signal stays linear
    np.testing.assert_allclose(out[0], 3 * np.arange(19) * 0.5 + 1, rtol=1e-6)


def test_crop_pad_and_zscore_properties():
    x = np.random.rand(5, 8, 3, 10).astype(np.float32)
    y = crop_or_pad(x, (7, 6, 5))
    assert y.shape == (7, 6, 5, 10)
    np.testing.assert_array_equal(y[1:6, :, 1:4], x[:, 1:7])
    mask = np.zeros((5, 8, 3), bool)
    mask[1:4] = True
    z = zscore_in_mask(x, mask)
    np.testing.assert_allclose(z[mask].mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(z[mask].std(-1), 1, atol=1e-4)
    assert not z[~mask].any()


def test_cache_keeps_good_scans_and_reports_left_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FUNC, src / "good.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(src / "flat3d.nii.gz"))
    _write(src / "short.nii.gz", np.random.rand(17, 21, 3, 3) + 1)
    pre = PreprocessConfig(grid=(16, 20, 4), voxel_size=0, tr=2.0, mask="compute")
    cache = DataCache(tmp_path / "cache", FMRICacheBuilder(pre, min_frames=8))
    report = cache.prepare(find_scans(src))
    index = cache.index(find_scans(src))
    assert [e["source"].split("/")[-1] for e in index["entries"]] == ["good.nii"]
    errors = {e["source"].split("/")[-1]: e["reason"] for e in report["sources"] if e["status"] == "left_out"}
    assert "expected a 4D" in errors["flat3d.nii.gz"] and "shorter than one window" in errors["short.nii.gz"]
    vol, mask = open_scan(cache, index["entries"][0])
    assert isinstance(vol, np.memmap) and vol.dtype == np.int8 and vol.shape == (20, 4, 20, 16)
    assert mask.dtype == bool and mask.shape == (4, 20, 16)
    assert json.loads((tmp_path / "cache" / "report.json").read_text()) == report
    # cache is reused: same settings and files -> no rewrite
    mtime = (tmp_path / "cache" / "index.json").stat().st_mtime_ns
    cache.prepare(find_scans(src))
    assert (tmp_path / "cache" / "index.json").stat().st_mtime_ns == mtime


def test_quantize_error_bound():
    x = np.random.default_rng(0).normal(size=(6, 5, 4, 3)).astype(np.float32)
    q, s = quantize(x)
    assert np.abs(q * s - x).max() <= s / 2 + 1e-6


def test_mni_mask_resampled_into_scan_space():
    from foundation.modalities.fmri.preprocess import mni_mask_like
    aff = np.diag([8.0, 8.0, 8.0, 1.0])
    aff[:3, 3] = [-96, -132, -78]
    m = mni_mask_like(aff, (24, 28, 24))
    assert 0.2 < m.mean() < 0.7 and not m[0].any() and m[12, 16, 12]


def test_nifti2_reads_like_nifti1(tmp_path):
    data = np.random.default_rng(3).random((5, 6, 4, 7)).astype(np.float32)
    img = nib.Nifti2Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.5
    nib.save(img, str(tmp_path / "n2.nii"))
    scan = read_scan(tmp_path / "n2.nii")
    np.testing.assert_array_equal(scan.data, data)
    assert scan.tr == pytest.approx(1.5)


def test_dataset_prepare_on_a_user_folder_logs_left_out_and_serves_windows(tmp_path, caplog):
    import logging

    from foundation.modalities.fmri.dataset import FMRIWindows, FMRIWindowsConfig

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FUNC, src / "good.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(src / "anat.nii.gz"))
    cfg = FMRIWindowsConfig(source=str(src), cache_dir=str(tmp_path / "cache"), grid=(4, 20, 16), voxel_size=0, tr=2.0,
                            mask="compute", window=4, top_k=2, unit_size=(2, 2, 4, 4))
    with caplog.at_level(logging.WARNING, logger="foundation.data.cache"):
        report = FMRIWindows.prepare(cfg)
    assert "1 of 2 source(s) left out" in caplog.text and "anat.nii.gz" in caplog.text
    assert report["n_kept"] == 1 and "expected a 4D" in report["sources"][0]["reason"]
    ds = FMRIWindows(cfg)
    assert len(ds) == 2 and ds[0]["x"].shape == (1, 4, 4, 20, 16) and int(ds[0]["label"]) == -1
