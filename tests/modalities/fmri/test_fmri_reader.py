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
    out = resample_tr(3 * t[None] + 1, tr=2.0, new_tr=1.0)  # linear signal stays linear (padtype="line")
    np.testing.assert_allclose(out[0], 3 * np.arange(19) * 0.5 + 1, rtol=1e-3)  # resample_poly's own accuracy


def test_resample_tr_is_polyphase_and_does_not_alias():
    """Equals scipy.signal.resample_poly; a slow sine is kept, one above the new Nyquist is removed
    (linear interpolation would fold it back as a slow wave)."""
    from scipy.signal import resample_poly

    tr, new_tr = 0.8, 2.0  # up / down = 2 / 5; new Nyquist 0.25 Hz
    t = np.arange(400) * tr
    slow, fast = np.sin(2 * np.pi * 0.03 * t), np.sin(2 * np.pi * 0.45 * t)
    out = resample_tr(np.stack([slow, fast]), tr, new_tr)
    n = int(np.floor(399 * tr / new_tr)) + 1
    ref = resample_poly(np.stack([slow, fast]), 2, 5, axis=-1, padtype="line")[:, :n]
    np.testing.assert_allclose(out, ref, atol=1e-6)
    new_t = np.arange(n) * new_tr
    inner = slice(10, n - 10)
    np.testing.assert_allclose(out[0, inner], np.sin(2 * np.pi * 0.03 * new_t[inner]), atol=1e-2)
    assert np.abs(out[1, inner]).max() < 0.05  # the 0.45 Hz sine is gone
    lin = np.interp(new_t, t, fast)
    assert np.abs(lin[inner]).max() > 0.5  # linear interpolation aliases it to 0.05 Hz


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


def _oblique(codes: str, spacing, degrees=12.0) -> np.ndarray:
    """A voxel -> world affine with axes along ``codes`` (e.g. "LPS") rotated ``degrees`` about z and x."""
    a = np.deg2rad(degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    signs = [-1.0 if c in "LPI" else 1.0 for c in codes]
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(np.asarray(signs) * np.asarray(spacing))
    aff[:3, 3] = [40.0, -60.0, -30.0]
    return aff


def _linear_field(world: np.ndarray) -> np.ndarray:
    return 0.7 * world[0] - 0.4 * world[1] + 1.3 * world[2] + 5.0


@pytest.mark.parametrize("codes", ["LPS", "LAS"])
@pytest.mark.parametrize("voxel_size", [7.0, 2.0])
def test_resampled_values_sit_where_the_new_affine_says(tmp_path, codes, voxel_size):
    """A linear field written on an oblique LPS / LAS grid, read (reoriented to RAS+) and resampled: every
    interior voxel holds the field at the world position the new affine gives it."""
    from foundation.modalities.fmri.preprocess import resample_voxels

    shape, spacing = (20, 17, 11), (3.0, 2.5, 3.5)
    aff = _oblique(codes, spacing)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    world = (aff[:3, :3] @ idx + aff[:3, 3:]).reshape((3,) + shape)
    data = np.stack([_linear_field(world), 2 * _linear_field(world)], -1)
    img = nib.Nifti1Image(data.astype(np.float32), aff)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / "obl.nii.gz"))
    scan = read_scan(tmp_path / "obl.nii.gz")
    out, new_aff = resample_voxels(scan.data, scan.affine, voxel_size)
    np.testing.assert_allclose(np.sqrt((new_aff[:3, :3] ** 2).sum(0)), voxel_size, rtol=1e-12)
    m = 2 if voxel_size > 3.5 else 0  # the anti-aliasing blur meets the edge within two new voxels
    new_idx = np.stack(np.meshgrid(*[np.arange(m, n - m) for n in out.shape[:3]], indexing="ij")).reshape(3, -1)
    new_world = new_aff[:3, :3] @ new_idx + new_aff[:3, 3:]
    inner = out[m:out.shape[0] - m, m:out.shape[1] - m, m:out.shape[2] - m]
    np.testing.assert_allclose(inner[..., 0].reshape(-1), _linear_field(new_world), atol=2e-3)
    np.testing.assert_allclose(inner[..., 1].reshape(-1), 2 * _linear_field(new_world), atol=4e-3)


@pytest.mark.parametrize("voxel_size", [6.0, 2.0])
def test_resample_voxels_matches_nilearn(voxel_size):
    """Same values as nilearn: resample_img(interpolation='linear') on the new affine, after smooth_img with
    the anti-aliasing Gaussian when downsampling (compared inside, where both blurs see no edge)."""
    from nilearn.image import resample_img, smooth_img

    from foundation.modalities.fmri.preprocess import resample_voxels

    rng = np.random.default_rng(0)
    aff = _oblique("LAS", (3.0, 2.5, 3.5))
    data = rng.normal(size=(22, 24, 14, 3)).astype(np.float32)
    out, new_aff = resample_voxels(data, aff, voxel_size)
    spacing = np.array([3.0, 2.5, 3.5])
    sigma_mm = np.maximum(0.0, (voxel_size / spacing - 1) / 2) * spacing
    img = nib.Nifti1Image(data, aff)
    if sigma_mm.any():
        img = smooth_img(img, fwhm=sigma_mm * np.sqrt(8 * np.log(2)))
    ref = resample_img(img, target_affine=new_aff, target_shape=out.shape[:3], interpolation="linear",
                       force_resample=True, copy_header=True).get_fdata()
    m = 2 if sigma_mm.any() else 1  # (nilearn fills 0 where round-off puts an edge centre a hair outside)
    sl = tuple(slice(m, n - m) for n in out.shape[:3])
    np.testing.assert_allclose(out[sl], ref[sl], atol=1e-4)


def test_mni_mask_is_nilearns():
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    from foundation.modalities.fmri.preprocess import mni_mask_like

    aff = _oblique("RAS", (8.0, 8.0, 8.0), degrees=5.0)
    aff[:3, 3] = [-90, -120, -70]
    ref = resample_img(load_mni152_brain_mask(resolution=1), target_affine=aff, target_shape=(24, 28, 24),
                       interpolation="nearest", force_resample=True, copy_header=True).get_fdata() > 0
    got = mni_mask_like(aff, (24, 28, 24))
    assert got.any() and np.array_equal(got, ref)


def test_bids_dataset_through_pybids_inheritance_derivatives_and_subjects(tmp_path):
    """A top-level task sidecar applies to every run (a run's own sidecar overrides it), derivatives/ is not
    read, and the subject entity is the scan's group: two runs of one subject stay on one side of a split."""
    from bids import BIDSLayout

    from foundation.data.splits import group_split

    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    (tmp_path / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    for sub in ("01", "02", "03", "04"):
        for run in ("1", "2"):
            (tmp_path / f"sub-{sub}" / "func").mkdir(parents=True, exist_ok=True)
            _write(tmp_path / f"sub-{sub}" / "func" / f"sub-{sub}_task-rest_run-{run}_bold.nii.gz", np.random.rand(3, 3, 3, 4))
    (tmp_path / "sub-02" / "func" / "sub-02_task-rest_run-2_bold.json").write_text(json.dumps({"RepetitionTime": 0.8}))
    deriv = tmp_path / "derivatives" / "prep" / "sub-01" / "func"
    deriv.mkdir(parents=True)
    _write(deriv / "sub-01_task-rest_desc-preproc_bold.nii.gz", np.random.rand(3, 3, 3, 4))
    files = find_scans(tmp_path)
    assert len(files) == 8 and not any("derivatives" in p.parts for p in files)
    layout = BIDSLayout(str(tmp_path), validate=False)
    scans = [read_scan(f) for f in files]
    for f, s in zip(files, scans):
        assert s.tr == pytest.approx(layout.get_metadata(str(f))["RepetitionTime"])  # pybids' inheritance
        assert s.subject == layout.get_file(str(f)).get_entities()["subject"]
    assert [s.tr for s in scans] == [1.5, 1.5, 1.5, 0.8, 1.5, 1.5, 1.5, 1.5] and "pybids" in scans[0].tr_note
    groups = [s.subject for s in scans]
    for seed in range(10):
        tr, te = group_split(groups, 0.25, seed)
        assert not {groups[i] for i in tr} & {groups[i] for i in te}


def test_a_derivatives_pipeline_folder_reads_as_its_own_dataset(tmp_path):
    """fmriprep-style output: derivatives/prep has its own dataset_description.json and sidecars."""
    prep = tmp_path / "derivatives" / "prep"
    (prep / "sub-05" / "func").mkdir(parents=True)
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"}))
    (prep / "dataset_description.json").write_text(json.dumps(
        {"Name": "prep", "BIDSVersion": "1.9.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "prep"}]}))
    f = _write(prep / "sub-05" / "func" / "sub-05_task-rest_space-MNI_desc-preproc_bold.nii.gz", np.random.rand(3, 3, 3, 4))
    (prep / "sub-05" / "func" / "sub-05_task-rest_space-MNI_desc-preproc_bold.json").write_text(
        json.dumps({"RepetitionTime": 0.72}))
    assert find_scans(prep) == [f]
    scan = read_scan(f)
    assert scan.tr == pytest.approx(0.72) and scan.subject == "05"
