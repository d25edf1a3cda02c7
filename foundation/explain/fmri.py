"""fMRI explanations: voxel attributions as NIfTI in the scan's space, glass brain and stat map, window saliency.

A window ``x [1, W, Z, Y, X]`` of a cached scan is attributed voxel by voxel and frame by frame; the voxel map
is the sum over frames of |attribution|, averaged over a scan's explained windows, transposed to nibabel's
``[X, Y, Z]`` and written with the affine of the preprocessing grid (:func:`grid_affine`: the scan's own
canonical (RAS+) affine, scaled by the voxel resampling and shifted by the centre crop/pad, exactly as
:func:`foundation.modalities.fmri.preprocess.preprocess_scan` moved the data), so it overlays the scan.

Ground truth (:func:`blob_auroc`): the demo corpus drives one network per subject (the label), two Gaussian
blobs of ``BLOB_SIGMA_MM`` at known MNI centres (jittered by 4 mm per subject); voxels of the brain mask within
one sigma of a driven centre are the positives of an AUROC of the voxel map. :func:`drive_map` is the planted
activation itself, read off the model's input (the voxel series correlated with the corpus's task regressor): the
reference an explanation is scored beside (its AUROC is what a perfect map of the drive reaches on those frames).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foundation.atomic import atomic_path
from foundation.errors import DataError
from foundation.explain.figure import pyplot, save_figure

__all__ = ["blob_auroc", "drive_map", "grid_affine", "plot_brain", "plot_saliency", "voxel_map", "write_nifti"]


def grid_affine(dataset: Any, scan: int) -> np.ndarray:
    """Voxel -> world (mm) affine ``[4, 4]`` of the cached grid of ``scan`` (``[X, Y, Z]`` voxel order)."""
    import nibabel as nib

    entry = dataset.scans[scan]
    source = Path(entry["source"])
    if not source.is_file():
        raise DataError(f"{source}: the scan behind cache entry {scan} is gone; its affine cannot be recovered. Keep "
                        "the source files beside the cache or rebuild it")
    img = nib.as_closest_canonical(nib.load(str(source)))
    affine = np.asarray(img.affine, dtype=np.float64)
    shape = np.array(img.shape[:3])
    cfg = dataset.config.preprocess
    if cfg.voxel_size > 0:
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        if np.any(np.abs(spacing / cfg.voxel_size - 1) > 1e-3):
            factors = cfg.voxel_size / spacing
            shape = np.floor((shape - 1) / factors + 1e-9).astype(int) + 1
            affine = affine @ np.diag(np.append(factors, 1.0))
    grid = np.array(cfg.grid)  # (X, Y, Z)
    offset = np.where(shape > grid, (shape - grid) // 2, -((grid - shape) // 2))
    shift = np.eye(4)
    shift[:3, 3] = offset
    return affine @ shift


def voxel_map(attr: np.ndarray) -> np.ndarray:
    """``[S, 1, W, Z, Y, X]`` attributions of one scan's windows -> ``[X, Y, Z]`` mean over windows of sum_t |a|."""
    return np.abs(attr).sum(axis=(1, 2)).mean(0).transpose(2, 1, 0)


def write_nifti(path: str | Path, vol: np.ndarray, affine: np.ndarray) -> Path:
    """``vol [X, Y, Z]`` as a float32 NIfTI-1 with ``affine`` (written to a temporary name, then renamed)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(vol, np.float32), affine)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def plot_brain(nifti: str | Path, glass: str | Path, stat: str | Path, title: str = "") -> tuple[Path, Path]:
    """nilearn glass brain and stat map (on nilearn's bundled MNI152 template) of a voxel map, as PNGs."""
    import nibabel as nib
    from nilearn import plotting

    plt = pyplot()
    img = nib.load(str(nifti))
    thr = float(np.percentile(np.asarray(img.dataobj)[np.asarray(img.dataobj) > 0], 80)) if np.any(
        np.asarray(img.dataobj) > 0) else 0.0
    for kind, path in (("glass", glass), ("stat", stat)):
        fig = plt.figure(figsize=(7, 2.6))
        if kind == "glass":
            plotting.plot_glass_brain(img, figure=fig, threshold=thr, colorbar=True, title=title or None,
                                      plot_abs=True, cmap="hot")
        else:
            plotting.plot_stat_map(img, figure=fig, threshold=thr, colorbar=True, title=title or None,
                                   display_mode="ortho", cmap="hot", resampling_interpolation="nearest")
        save_figure(fig, path)
    return Path(glass), Path(stat)


def plot_saliency(path: str | Path, dataset: Any, scan: int, title: str = "") -> Path:
    """Stage-1 window saliency of one cached scan over time, the windows the data set kept shaded."""
    from foundation.modalities.fmri.cache import open_scan
    from foundation.modalities.fmri.saliency import parcel_series, window_scores

    cfg = dataset.config
    entry = dataset.scans[scan]
    vol, mask = open_scan(dataset.cache, entry)
    series = parcel_series(np.asarray(vol, np.float32) * entry["meta"]["scale"], mask, cfg.saliency_pool)
    starts, scores = window_scores(series, cfg.window, max(1, cfg.window // 2))
    tr = cfg.tr if cfg.tr > 0 else float(entry["meta"]["tr"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.plot((starts + cfg.window / 2) * tr, scores, "o-", ms=3, label="window saliency (window centre)")
    kept = [s for i, s in dataset.items if i == scan]
    for k, s in enumerate(kept):
        ax.axvspan(s * tr, (s + cfg.window) * tr, color="tab:orange", alpha=0.25, label="kept" if k == 0 else None)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("leading-mode energy / parcel")
    ax.set_title(title or f"stage-1 saliency, {Path(entry['source']).name}", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def blob_auroc(vmap: np.ndarray, affine: np.ndarray, mask_xyz: np.ndarray, label: int,
               radius_mm: float | None = None) -> float:
    """AUROC of a voxel map ``[X, Y, Z]`` against the driven network's blobs (within the brain mask)."""
    from sklearn.metrics import roc_auc_score

    from foundation.modalities.fmri.demo_corpus import BLOB_SIGMA_MM, NETWORKS

    radius = radius_mm or BLOB_SIGMA_MM
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in vmap.shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centres = np.asarray(list(NETWORKS.values())[label], float)
    d = np.linalg.norm(world[:, None, :] - centres[None], axis=-1).min(1)
    inside = mask_xyz.reshape(-1)
    y = (d <= radius)[inside]
    if y.all() or not y.any():
        raise DataError(f"fMRI ground truth: the driven blobs cover {int(y.sum())} of {len(y)} brain voxels; the grid "
                        "does not hold the demo network (is it the demo corpus in MNI space?)")
    return float(roc_auc_score(y, vmap.reshape(-1)[inside]))


def drive_map(x: np.ndarray, tr: float, start: int = 0, n_frames: int | None = None) -> np.ndarray:
    """The demo corpus's planted activation in a window of a scan: ``|r|`` of each voxel's series with the drive.

    Args:
        x: ``[T, Z, Y, X]`` preprocessed frames of one scan (the model's input), ``T >= 3``, taken from frame
            ``start`` of a scan of ``n_frames`` frames (default: ``start + T``, i.e. the scan's first frames).
        tr: seconds per frame of ``x``.
        start: the first frame of ``x`` in its scan (the task design is fixed in scan time).
        n_frames: frames of the whole scan (the design's epochs are fractions of it).

    Returns:
        ``[X, Y, Z]`` Pearson |r| with :func:`~foundation.modalities.fmri.demo_corpus.task_regressor` over these
        frames (0 for flat voxels, e.g. outside the brain mask).

    Raises:
        DataError: fewer than 3 frames, or frames in which the task regressor is flat (no task block in them).
    """
    from foundation.modalities.fmri.demo_corpus import task_regressor

    T = x.shape[0]
    total = n_frames if n_frames is not None else start + T
    if T < 3 or start < 0 or start + T > total:
        raise DataError(f"drive_map: need >= 3 frames inside the scan; got {T} frames from {start} of {total}")
    reg = task_regressor(total, tr)[start:start + T]
    if reg.std() < 1e-6:
        raise DataError(f"drive_map: frames {start}-{start + T} of {total} hold no task block (the regressor is flat "
                        "there); give frames that cover a task epoch")
    r = (reg - reg.mean()) / reg.std()
    v = np.asarray(x, np.float64)
    sd = v.std(axis=0)
    z = (v - v.mean(axis=0)) / np.where(sd > 1e-6, sd, np.inf)  # [T, Z, Y, X]; flat voxels -> 0
    return np.abs(np.tensordot(r, z, axes=(0, 0)) / T).transpose(2, 1, 0)  # [Z, Y, X] -> [X, Y, Z]
