"""A generated fMRI corpus with known structure: network time courses in the MNI brain, HRF, drift, labels.

Each subject gets one 4D NIfTI scan (BIDS layout ``sub-XX/func/sub-XX_task-demo_bold.nii.gz``
with a sidecar JSON giving ``RepetitionTime``) in MNI space at ``voxel_size`` mm:

* anatomy-like baseline: 100 inside nilearn's MNI152 brain mask (smoothly varying), 5 outside;
* ``N_NETWORKS`` networks, each two Gaussian blobs (``BLOB_SIGMA_MM``) at MNI coordinates (visual, motor,
  default mode, auditory), with subject-specific jitter of the centres and amplitudes;
* spontaneous activity of every network: low-pass noise convolved with the canonical
  double-gamma haemodynamic response (SPM's HRF: peak 6 s, undershoot 16 s, ratio 1/6);
* a task: the subject's *driven* network (the class label) follows a block design
  (``block`` s on / off) during two task epochs; the rest of the scan is rest. The drive
  amplitude (``drive``, ``DRIVE_RANGE`` percent signal) is the regression target;
* motion-like drift: a slow random-walk displacement d(t) applied to first order,
  I(x + d) ~ I(x) + d . grad I(x), plus a linear scanner drift; white thermal noise.

``labels.tsv`` lists file, subject, label (network index) and drive. The windows that
hold task blocks carry more coherent signal than the rest, which the saliency stage
should find; the label is what a probe should recover.

How strong: with the defaults (drive 3-6%, blobs of 12 mm, 48 subjects at 8 mm) stage 1 picks
windows that hold 77% task frames (random windows 36%), and a linear probe on hand-made raw
features (temporal std of 27 coarse regions) reaches about 0.86 balanced accuracy on the salient
windows (chance 0.25). The first version (drive 1-3%, 9 mm, 24 subjects) gave 40% and 0.35: too
weak for a study of 24 subjects to show anything (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foundation.data.demo import make_once

__all__ = ["make_demo_corpus", "hrf", "NETWORKS", "N_NETWORKS", "TASK_EPOCHS", "DRIVE_RANGE", "BLOB_SIGMA_MM", "read_labels", "task_frames", "task_regressor"]

NETWORKS: dict[str, list[tuple[float, float, float]]] = {
    "visual": [(-12, -88, 4), (14, -88, 4)],
    "motor": [(-38, -22, 56), (38, -22, 56)],
    "default-mode": [(0, -56, 28), (0, 50, 10)],
    "auditory": [(-54, -20, 8), (54, -20, 8)],
}
N_NETWORKS = len(NETWORKS)
TASK_EPOCHS = (0.25, 0.65)
"""Starts of the two task epochs as fractions of the scan."""
DRIVE_RANGE = (3.0, 6.0)
"""Range of the task drive (percent signal change at a blob centre), drawn per subject."""
BLOB_SIGMA_MM = 12.0
"""Standard deviation (mm) of each network blob."""


def hrf(tr: float, duration: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``tr`` s, unit sum."""
    from scipy.stats import gamma

    t = np.arange(0, duration, tr)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6.0
    return h / h.sum()


def _affine(voxel_size: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    lo, hi = np.array([-96.0, -132.0, -78.0]), np.array([96.0, 96.0, 96.0])
    shape = tuple(int(v) for v in np.ceil((hi - lo) / voxel_size))
    aff = np.diag([voxel_size] * 3 + [1.0])
    aff[:3, 3] = lo
    return aff, shape


def make_demo_corpus(out: str | Path, n_subjects: int = 24, n_frames: int = 96, tr: float = 2.0,
                     voxel_size: float = 6.0, block: float = 16.0, seed: int = 0,
                     drive_range: tuple[float, float] = DRIVE_RANGE, blob_sigma: float = BLOB_SIGMA_MM) -> Path:
    """Write the corpus into ``out`` unless one with the same parameters is there.

    The corpus is generated in a staging folder and moved into place (:func:`foundation.data.demo.make_once`).

    Returns:
        ``out`` (a BIDS-like tree with dataset_description.json and labels.tsv).
    """
    params = {"n_subjects": n_subjects, "n_frames": n_frames, "tr": tr, "voxel_size": voxel_size, "block": block, "seed": seed,
              "drive_range": list(drive_range), "blob_sigma": blob_sigma}
    return make_once(out, params, lambda stage: _write(stage, n_subjects, n_frames, tr, voxel_size, block, seed,
                                                       drive_range, blob_sigma))


def _write(out: Path, n_subjects: int, n_frames: int, tr: float, voxel_size: float, block: float, seed: int,
           drive_range: tuple[float, float], blob_sigma: float) -> None:
    import nibabel as nib

    from foundation.modalities.fmri.preprocess import mni_mask_like

    (out / "dataset_description.json").write_text(json.dumps({"Name": "foundation-suite fMRI demo", "BIDSVersion": "1.8.0"}))
    rng = np.random.default_rng(seed)
    aff, shape = _affine(voxel_size)
    mask = mni_mask_like(aff, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    world = ijk * voxel_size + aff[:3, 3]  # [X, Y, Z, 3] mm
    from scipy.ndimage import gaussian_filter

    base = np.where(mask, 100.0, 5.0) * (1 + 0.1 * gaussian_filter(rng.normal(size=shape), 2) * 10)
    base = gaussian_filter(base, 0.7)
    grad = np.stack(np.gradient(base), -1)  # [X, Y, Z, 3] per voxel
    h = hrf(tr)
    drive_shape = task_regressor(n_frames, tr, block)
    rows = ["file\tsubject\tlabel\tdrive"]
    for s in range(n_subjects):
        sub = f"sub-{s + 1:02d}"
        label = s % N_NETWORKS
        drive = float(rng.uniform(*drive_range))
        signal = np.zeros(shape + (n_frames,), np.float32)
        for k, centres in enumerate(NETWORKS.values()):
            spont = np.convolve(gaussian_filter(rng.normal(size=n_frames + len(h)), 1.5), h)[len(h):len(h) + n_frames]
            tc = 0.3 * spont / (spont.std() + 1e-9)
            if k == label:
                tc = tc + drive * drive_shape
            amp = rng.uniform(0.8, 1.2)
            for c in centres:
                c = np.asarray(c) + rng.normal(scale=4.0, size=3)
                blob = np.exp(-((world - c) ** 2).sum(-1) / (2 * blob_sigma**2)) * mask
                signal += (amp * blob)[..., None] * tc[None, None, None, :].astype(np.float32)
        disp = np.cumsum(rng.normal(scale=0.01, size=(n_frames, 3)), 0) / voxel_size  # voxels
        motion = np.einsum("xyzc,tc->xyzt", grad, disp).astype(np.float32)
        trend = np.linspace(0, rng.uniform(-1, 1), n_frames)[None, None, None, :]
        noise = rng.normal(scale=rng.uniform(0.6, 1.0), size=shape + (n_frames,))
        data = base[..., None] * (1 + 0.01 * signal) + motion + trend * base[..., None] * 0.01 + noise
        func = out / sub / "func"
        func.mkdir(parents=True, exist_ok=True)
        name = f"{sub}_task-demo_bold.nii.gz"
        img = nib.Nifti1Image(data.astype(np.float32), aff)
        img.set_data_dtype(np.int16)  # scaled int16 (scl_slope): half the bytes to compress
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = tr
        nib.save(img, str(func / name))
        (func / f"{sub}_task-demo_bold.json").write_text(json.dumps({"RepetitionTime": tr, "TaskName": "demo"}))
        rows.append(f"{name}\t{sub}\t{label}\t{drive:.4f}")
    (out / "labels.tsv").write_text("\n".join(rows) + "\n")


def task_regressor(n_frames: int, tr: float = 2.0, block: float = 16.0) -> np.ndarray:
    """[T] the shape of the planted task drive: the block design (two epochs at ``TASK_EPOCHS``, each two blocks
    of ``block / 2`` s on, ``block / 2`` s off) convolved with :func:`hrf`, scaled to a peak of 1.

    The driven network's blobs follow ``drive * task_regressor(...)`` on top of their spontaneous activity, so the
    correlation of a voxel's series with it is the planted activation map (a GLM of the known design).
    """
    t = np.arange(n_frames) * tr
    task = np.zeros(n_frames)
    for e0 in TASK_EPOCHS:  # two task epochs, each 2 blocks long
        start = e0 * n_frames * tr
        on = (t >= start) & (t < start + 2 * block) & (((t - start) // (block / 2)) % 2 == 0)  # block/2 on, block/2 off
        task[on] = 1.0
    full = np.convolve(task, hrf(tr))
    return full[:n_frames] / max(full.max(), 1e-9)


def task_frames(n_frames: int, tr: float = 2.0, block: float = 16.0, lag: float = 6.0) -> np.ndarray:
    """[T] bool: frames inside a task epoch, shifted by the HRF peak ``lag`` s (where the driven signal is)."""
    t = np.arange(n_frames) * tr
    out = np.zeros(n_frames, bool)
    for e0 in TASK_EPOCHS:
        start = e0 * n_frames * tr + lag
        out |= (t >= start) & (t < start + 2 * block)
    return out


def read_labels(path: str | Path) -> dict[str, dict[str, float | int | str]]:
    """``labels.tsv`` -> {file name: {"subject", "label", "drive"}}."""
    lines = Path(path).read_text().strip().splitlines()
    head = lines[0].split("\t")
    out = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split("\t")))
        out[row["file"]] = {"subject": row["subject"], "label": int(row["label"]), "drive": float(row["drive"])}
    return out
