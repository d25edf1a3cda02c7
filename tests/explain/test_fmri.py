"""fMRI explanations: the grid affine (checked against the cached MNI mask), blob AUROC, NIfTI, brain and saliency plots."""
from __future__ import annotations

import numpy as np
import pytest

from foundation.explain.fmri import (
    blob_auroc,
    drive_map,
    grid_affine,
    plot_brain,
    plot_saliency,
    voxel_map,
    write_nifti,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from foundation.config import load_recipe
    from foundation.modalities.fmri.dataset import FMRIWindows

    tmp = tmp_path_factory.mktemp("fmri")
    recipe = load_recipe("slim-brain-tiny-probe", [f"data.cache_dir={tmp / 'cache'}", "data.demo_subjects=4",
                                                   "data.demo_frames=48", "data.top_k=2"])
    FMRIWindows.prepare(recipe.data.config)
    return FMRIWindows(recipe.data.config)


def _mask_xyz(dataset, scan: int) -> np.ndarray:
    from foundation.modalities.fmri.cache import open_scan

    return np.asarray(open_scan(dataset.cache, dataset.scans[scan])[1]).transpose(2, 1, 0)


def test_grid_affine_puts_the_cached_mask_on_the_mni_brain(dataset):
    """The cache's brain mask is the MNI mask resampled onto the preprocessed grid: resampling it again with the
    recovered affine must give the same voxels (a shift of one voxel would not)."""
    from foundation.modalities.fmri.preprocess import mni_mask_like

    affine = grid_affine(dataset, 0)
    mask = _mask_xyz(dataset, 0)
    again = mni_mask_like(affine, mask.shape)
    assert (again == mask).mean() > 0.995
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0]  # one voxel along x
    assert (mni_mask_like(shifted, mask.shape) == mask).mean() < (again == mask).mean()


def test_blob_auroc_scores_a_planted_map_high_and_noise_at_chance(dataset):
    from foundation.modalities.fmri.demo_corpus import NETWORKS

    affine, mask = grid_affine(dataset, 0), _mask_xyz(dataset, 0)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in mask.shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    for label, centres in enumerate(NETWORKS.values()):
        planted = sum(np.exp(-((world - np.array(c)) ** 2).sum(-1) / (2 * 12.0**2)) for c in centres)
        assert blob_auroc(planted, affine, mask, label) > 0.99
        other = (label + 1) % len(NETWORKS)
        assert blob_auroc(planted, affine, mask, other) < 0.7
    noise = np.random.default_rng(0).random(mask.shape)
    assert abs(blob_auroc(noise, affine, mask, 0) - 0.5) < 0.1


def test_the_planted_drive_sits_on_the_ground_truth_blobs_of_every_network(dataset):
    """Planted signal through the whole input path (corpus -> resample/crop/pad -> z-score -> int8 cache): the voxels
    that follow the task design are the ground-truth blobs of the scan's network, motor (at the top of the brain,
    where the mask's edge and the padding of z are) as much as the others; a flipped axis or a shifted grid
    (y or z; the networks are left-right symmetric, so x cannot show) would drop the AUROC or move the peak a blob away."""
    from foundation.modalities.fmri.cache import open_scan
    from foundation.modalities.fmri.demo_corpus import NETWORKS

    seen = set()
    for scan, entry in enumerate(dataset.scans):
        label = dataset.label(scan)
        vol, _ = open_scan(dataset.cache, entry)
        x = np.asarray(vol, np.float32) * entry["meta"]["scale"]  # [T, Z, Y, X]
        vmap = drive_map(x, dataset.config.tr)
        affine, mask = grid_affine(dataset, scan), _mask_xyz(dataset, scan)
        assert blob_auroc(vmap, affine, mask, label) > 0.95, (scan, label)
        for other in set(range(len(NETWORKS))) - {label}:
            assert blob_auroc(vmap, affine, mask, other) < 0.75, (scan, label, other)
        peak = np.array(np.unravel_index(np.argmax(vmap), vmap.shape))
        world = affine[:3, :3] @ peak + affine[:3, 3]
        centres = np.array(list(NETWORKS.values())[label], float)
        assert np.linalg.norm(centres - world, axis=1).min() <= 2 * dataset.config.voxel_size  # jitter 4 mm/axis
        seen.add(label)
    assert seen == set(range(len(NETWORKS)))


def test_drive_map_refuses_frames_without_a_task_block(dataset):
    from foundation.errors import DataError

    x = np.random.default_rng(0).normal(size=(8, *dataset.config.grid)).astype(np.float32)
    with pytest.raises(DataError, match="hold no task block"):
        drive_map(x, dataset.config.tr, start=0, n_frames=48)  # the first epoch starts at frame 12
    with pytest.raises(DataError, match="inside the scan"):
        drive_map(x, dataset.config.tr, start=44, n_frames=48)


def test_nifti_keeps_the_affine_and_every_plot_writes_a_png(dataset, tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    W, Z, Y, X = dataset.config.window, *dataset.config.grid
    attr = rng.normal(size=(2, 1, W, Z, Y, X)).astype(np.float32)
    vmap = voxel_map(attr)
    assert vmap.shape == (X, Y, Z)
    np.testing.assert_allclose(vmap[3, 4, 5], np.abs(attr[:, 0, :, 5, 4, 3]).sum(1).mean(), rtol=1e-5)
    affine = grid_affine(dataset, 1)
    path = write_nifti(tmp_path / "v.nii.gz", vmap, affine)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), vmap, rtol=1e-6)
    glass, stat = plot_brain(path, tmp_path / "glass.png", tmp_path / "stat.png", title="t")
    sal = plot_saliency(tmp_path / "sal.png", dataset, 1)
    for png in (glass, stat, sal):
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
