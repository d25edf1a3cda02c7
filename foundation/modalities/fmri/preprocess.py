"""Preprocessing of a 4D scan to the recipe's grid: resample voxels and TR, crop/pad, z-score in a brain mask.

Steps (all pure functions of a :class:`~foundation.modalities.fmri.reader.Scan`):

1. spatial resampling to ``voxel_size`` mm (Gaussian anti-aliasing, then trilinear at the
   positions the new affine describes: :func:`resample_voxels`);
2. temporal resampling to ``tr`` seconds (polyphase low-pass filter, ``scipy.signal.resample_poly``);
3. centre crop / zero pad to the spatial ``grid`` (X, Y, Z);
4. a brain mask: ``"mni"`` (nilearn's MNI152 brain mask through ``nilearn.datasets``,
   resampled by nearest neighbour into the scan's world space with ``nilearn.image``), ``"compute"``
   (mean image above ``compute_threshold`` x its 98th percentile) or a mask file;
5. per-voxel z-score over time inside the mask; zero outside.

Output layout is time first, [T, Z, Y, X] (the encoder's (time, z, y, x)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.errors import ConfigError, DataError
from foundation.modalities.fmri.reader import Scan

__all__ = ["PreprocessConfig", "preprocess_scan", "resample_voxels", "resample_tr", "crop_or_pad", "zscore_in_mask", "brain_mask", "mni_mask_like", "load_mni_mask"]


@dataclass(frozen=True)
class PreprocessConfig:
    """What a scan is turned into (the fMRI counterpart of the EEG ``PreprocessConfig``)."""

    grid: tuple[int, int, int] = field(default=(24, 28, 24), metadata={"help": "spatial grid (X, Y, Z) in voxels after crop/pad"})
    voxel_size: float = field(default=8.0, metadata={"help": "target isotropic voxel size in mm (0: keep the scan's)"})
    tr: float = field(default=2.0, metadata={"help": "target repetition time in seconds (0: keep the scan's)"})
    mask: str = field(default="mni", metadata={"help": "'mni', 'compute' or a 3D mask NIfTI in the scans' world space"})
    compute_threshold: float = field(default=0.3, metadata={"help": "mask='compute': fraction of the mean image's 98th percentile"})

    def __post_init__(self) -> None:
        if len(self.grid) != 3 or min(self.grid) < 1 or self.voxel_size < 0 or self.tr < 0:
            raise ConfigError(f"preprocess: need a grid of three sizes >= 1, voxel_size >= 0 and tr >= 0; got "
                              f"grid={self.grid}, voxel_size={self.voxel_size}, tr={self.tr}")


def resample_voxels(data: np.ndarray, affine: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample [X, Y, Z, ...] on the grid ``affine`` to ``voxel_size`` mm along each voxel axis.

    The new grid keeps the axes (and any obliquity) of ``affine`` and its first voxel centre;
    voxel ``j`` along an axis of spacing ``s`` sits at old voxel ``j * voxel_size / s``, and the
    axis keeps the ``floor((n - 1) * s / voxel_size) + 1`` centres that fall inside the scan. So the
    returned affine is ``affine @ diag(voxel_size / s, 1)`` and describes exactly where each value
    was sampled. Values are trilinear (``scipy.ndimage.map_coordinates``, as
    ``nilearn.image.resample_img(interpolation="linear")``). Before downsampling an axis by
    ``f = voxel_size / s > 1``, a Gaussian of ``sigma = (f - 1) / 2`` old voxels (the rule of
    ``skimage.transform.rescale(anti_aliasing=True)``) removes what the coarser grid cannot hold.

    Args:
        data: the volume(s), spatial axes first.
        affine: voxel -> world (mm) [4, 4] of ``data``.
        voxel_size: the target spacing in mm (> 0).

    Returns:
        ``(resampled float32 [X', Y', Z', ...], new affine [4, 4])``.
    """
    from scipy import ndimage

    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    factors = voxel_size / spacing  # old voxels per new voxel
    shape = tuple(int(np.floor((n - 1) / f + 1e-9)) + 1 for n, f in zip(data.shape[:3], factors))
    sigma = [max(0.0, (f - 1) / 2) for f in factors] + [0.0] * (data.ndim - 3)
    src = data.astype(np.float32)
    if any(sig > 0 for sig in sigma):
        src = ndimage.gaussian_filter(src, sigma, mode="nearest", truncate=4.0)
    grid = np.meshgrid(*[np.arange(n) * f for n, f in zip(shape, factors)], indexing="ij")
    coords = np.stack(grid)  # [3, X', Y', Z'] source voxel positions
    flat = src.reshape(src.shape[:3] + (-1,))
    out = np.stack([ndimage.map_coordinates(flat[..., k], coords, order=1, mode="nearest") for k in range(flat.shape[-1])],
                   axis=-1).reshape(shape + data.shape[3:])
    new_affine = np.asarray(affine, dtype=np.float64) @ np.diag(np.append(factors, 1.0))
    return out.astype(np.float32), new_affine


def resample_tr(data: np.ndarray, tr: float, new_tr: float) -> np.ndarray:
    """Polyphase resampling of [..., T] sampled every ``tr`` s onto a ``new_tr`` s grid starting at 0.

    ``scipy.signal.resample_poly`` with ``up / down = tr / new_tr`` (a fraction with denominator
    at most 1000) and its default Kaiser-windowed low-pass, so content above the new Nyquist
    frequency ``1 / (2 new_tr)`` is filtered out instead of aliased. ``padtype="line"`` removes
    the line through the end points before filtering and adds it back (a linear trend passes
    unchanged, no ringing at the ends).

    Returns:
        [..., T'] float32 with T' = floor((T - 1) * tr / new_tr) + 1 (the samples inside the scan).
    """
    from fractions import Fraction

    from scipy.signal import resample_poly

    T = data.shape[-1]
    n_new = int(np.floor((T - 1) * tr / new_tr + 1e-9)) + 1
    ratio = Fraction(tr / new_tr).limit_denominator(1000)
    out = resample_poly(data.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1, padtype="line")
    return out[..., :n_new].astype(np.float32)


def crop_or_pad(data: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """Centre-crop or zero-pad the leading ``len(grid)`` axes of ``data`` to ``grid``."""
    out = data
    for axis, size in enumerate(grid):
        n = out.shape[axis]
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - n - before)
            out = np.pad(out, pad)
    return out


def zscore_in_mask(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-voxel z-score over time [X, Y, Z, T] inside ``mask`` [X, Y, Z]; zero outside (and for flat voxels)."""
    mean = data.mean(axis=-1, keepdims=True)
    std = data.std(axis=-1, keepdims=True)
    z = np.where(std > 1e-6 * (np.abs(mean) + 1), (data - mean) / np.maximum(std, 1e-12), 0.0)
    return (z * mask[..., None]).astype(np.float32)


def load_mni_mask() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's MNI152 brain mask: ``nilearn.datasets.load_mni152_brain_mask(resolution=1)``.

    The 1 mm skull-stripped T1 template (2009a symmetric) that nilearn ships, scaled to max 1 and
    thresholded at 0.2; nothing is downloaded.

    Returns:
        (mask [X, Y, Z] bool, affine [4, 4]).
    """
    try:
        from nilearn.datasets import load_mni152_brain_mask
    except ImportError as err:
        raise ImportError("mask='mni' needs nilearn (it ships the MNI152 template): pip install nilearn") from err
    img = load_mni152_brain_mask(resolution=1)
    return np.asarray(img.get_fdata()) > 0.5, np.asarray(img.affine, dtype=np.float64)


def mni_mask_like(affine: np.ndarray, shape: tuple[int, int, int], mni: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The MNI152 brain mask resampled (nearest) onto a grid with ``affine`` and ``shape``: [X, Y, Z] bool.

    ``nilearn.image.resample_img(..., interpolation="nearest")``.

    Args:
        affine: voxel -> world (mm) of the target grid.
        shape: target grid.
        mni: the result of :func:`load_mni_mask` (loaded here when None).
    """
    import nibabel
    from nilearn.image import resample_img

    mask, mni_affine = mni if mni is not None else load_mni_mask()
    img = nibabel.Nifti1Image(mask.astype(np.uint8), mni_affine)
    out = resample_img(img, target_affine=np.asarray(affine, dtype=np.float64), target_shape=tuple(shape),
                       interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(out.dataobj) > 0


def brain_mask(kind: str, data: np.ndarray, affine: np.ndarray, threshold: float = 0.3, where: str = "",
               mni: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A brain mask [X, Y, Z] bool for ``data`` [X, Y, Z, T] with ``affine``.

    Raises:
        DataError: an empty mask, a mask file of another grid, or an unknown kind.
    """
    shape = data.shape[:3]
    if kind == "mni":
        mask = mni_mask_like(affine, shape, mni)
    elif kind == "compute":
        mean = np.abs(data).mean(axis=-1)
        mask = mean > threshold * np.percentile(mean, 98)
    else:
        import nibabel

        path = Path(kind)
        if not path.exists():
            raise DataError(f"{where}mask {kind!r} is neither 'mni', 'compute' nor an existing mask file")
        img = nibabel.as_closest_canonical(nibabel.load(str(path)))
        if img.shape[:3] != shape:
            raise DataError(f"{where}mask {path} has shape {img.shape[:3]}, the scan {shape}; resample the mask to the scans")
        mask = np.asarray(img.get_fdata()) > 0.5
    if not mask.any():
        raise DataError(
            f"{where}brain mask {kind!r} covers no voxel of the scan; is the scan in MNI space? use mask='compute' otherwise"
        )
    return mask


def preprocess_scan(scan: Scan, config: PreprocessConfig, mni: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample, mask, z-score and crop/pad one scan.

    Args:
        scan: a scan from :func:`~foundation.modalities.fmri.reader.read_scan`.
        config: the target grid, voxel size, TR and mask.
        mni: a preloaded :func:`load_mni_mask` (for many scans).

    Returns:
        (volume [T, Z, Y, X] float32 z-scored inside the mask, mask [Z, Y, X] bool).

    Raises:
        DataError: an empty brain mask.
    """
    data, affine = scan.data, scan.affine
    if config.voxel_size > 0:
        spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        if np.any(np.abs(spacing / config.voxel_size - 1) > 1e-3):
            data, affine = resample_voxels(data, affine, config.voxel_size)
    if config.tr > 0 and abs(scan.tr - config.tr) > 1e-6:
        data = resample_tr(data, scan.tr, config.tr)
    mask = brain_mask(config.mask, data, affine, config.compute_threshold, where=f"{scan.path}: ", mni=mni)
    vol = zscore_in_mask(data, mask)
    vol, mask = crop_or_pad(vol, config.grid), crop_or_pad(mask, config.grid)
    # [X, Y, Z, T] -> [T, Z, Y, X]
    return np.ascontiguousarray(vol.transpose(3, 2, 1, 0)), np.ascontiguousarray(mask.transpose(2, 1, 0))
