"""Stage 1 of SLIM-Brain: score every temporal window of a scan and keep the top k.

The extractor is computed, not learned, and reads the whole scan cheaply:

1. coarse-voxel time series: the z-scored scan [T, Z, Y, X] is averaged over
   ``pool`` ^ 3 voxel blocks inside the brain mask, giving R parcel series [T, R]
   (blocks with fewer than half of their voxels in the mask are dropped);
2. each parcel series is detrended (quadratic, for scanner drift) and z-scored over the whole scan;
3. a window [t, t + W) scores the leading eigenvalue of its parcel second-moment
   matrix (about the scan mean, so a sustained response counts) divided by R: the
   energy per parcel of the strongest spatially coherent mode in that window. White noise gives about (1 + sqrt(R / W))^2 / R of the per-parcel
   variance spread over all modes; a network driven coherently across parcels
   (a task block, a burst of connectivity) raises it.

Windows start every ``stride`` frames; the top k are chosen greedily, each new one
overlapping an already chosen one by at most ``max_overlap`` of W. ``random_windows``
draws k windows with the same overlap rule for the saliency ablation.
"""
from __future__ import annotations

import numpy as np

from foundation.errors import DataError

__all__ = ["parcel_series", "check_parcels", "window_scores", "top_k_windows", "random_windows"]


def parcel_series(vol: np.ndarray, mask: np.ndarray, pool: int = 4) -> np.ndarray:
    """Coarse-voxel series [T, R] of ``vol`` [T, Z, Y, X] within ``mask`` [Z, Y, X], each z-scored over time."""
    T = vol.shape[0]
    gz, gy, gx = (s // pool for s in mask.shape)
    v = np.asarray(vol[:, : gz * pool, : gy * pool, : gx * pool], dtype=np.float32)
    m = mask[: gz * pool, : gy * pool, : gx * pool].astype(np.float32)
    v = (v * m).reshape(T, gz, pool, gy, pool, gx, pool).sum(axis=(2, 4, 6))  # [T, Z, Y, X] -> [T, gz, gy, gx]
    n = m.reshape(gz, pool, gy, pool, gx, pool).sum(axis=(1, 3, 5))
    keep = n >= pool**3 / 2
    series = v[:, keep] / n[keep]  # [T, R]
    t = np.linspace(-1, 1, T)
    basis = np.stack([np.ones(T), t, t**2], 1)  # remove scanner drift: quadratic detrend
    series = series - basis @ np.linalg.lstsq(basis, series, rcond=None)[0]
    std = series.std(0)
    return series[:, std > 1e-6] / std[std > 1e-6]


def window_scores(series: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts [W_n], scores [W_n]): leading-eigenvalue share of each window's parcel covariance."""
    T, R = series.shape
    starts = np.arange(0, T - window + 1, stride)
    scores = np.empty(len(starts))
    for i, s in enumerate(starts):
        w = series[s:s + window]  # not re-centred: a window's offset from the scan mean is signal too
        # the top eigenvalue of the R x R covariance equals that of the (smaller) W x W Gram matrix
        gram = (w @ w.T) / window if window < R else (w.T @ w) / window
        scores[i] = np.linalg.eigvalsh(gram)[-1] / R
    return starts, scores


def _greedy(order: np.ndarray, starts: np.ndarray, k: int, window: int, max_overlap: float) -> list[int]:
    chosen: list[int] = []
    limit = max_overlap * window
    for i in order:
        if all(window - abs(int(starts[i]) - c) <= limit for c in chosen):
            chosen.append(int(starts[i]))
        if len(chosen) == k:
            break
    return sorted(chosen)


def check_parcels(series: np.ndarray, pool: int, where: str = "scan") -> None:
    """Refuse a scan the saliency stage cannot score: no parcel left after pooling (a flat scan, a tiny mask).

    Raises:
        DataError: ``series`` [T, R] has R = 0, naming ``where``.
    """
    if series.shape[1] == 0:
        raise DataError(f"{where}: saliency pooling over {pool}^3-voxel blocks leaves no parcel with a varying signal "
                        "(the scan is flat inside the brain mask, or no block is half inside the mask); lower "
                        "data.saliency_pool, check the mask, or remove the scan")


def top_k_windows(vol: np.ndarray, mask: np.ndarray, window: int, k: int, stride: int | None = None,
                  pool: int = 4, max_overlap: float = 0.5, where: str = "scan") -> list[int]:
    """Start frames of the k most salient windows of ``vol`` [T, Z, Y, X] (fewer when the scan is short).

    Raises:
        DataError: no parcel left to score (see :func:`check_parcels`).
    """
    series = parcel_series(vol, mask, pool)
    check_parcels(series, pool, where)
    starts, scores = window_scores(series, window, stride or max(1, window // 2))
    return _greedy(np.argsort(-scores, kind="stable"), starts, k, window, max_overlap)


def random_windows(n_times: int, window: int, k: int, rng: np.random.Generator, stride: int | None = None,
                   max_overlap: float = 0.5) -> list[int]:
    """Start frames of k random windows (same grid and overlap rule as :func:`top_k_windows`)."""
    starts = np.arange(0, n_times - window + 1, stride or max(1, window // 2))
    return _greedy(rng.permutation(len(starts)), starts, k, window, max_overlap)
