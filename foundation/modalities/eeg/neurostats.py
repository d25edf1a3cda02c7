"""Neurodynamics statistics of EEG windows: the targets of DeeperBrain's statistics objective.

DeeperBrain predicts, from the masked input, statistics of the unmasked window:
relative band power (delta 1-4, theta 4-8, alpha 8-13, beta 13-30, gamma 30-80 Hz),
phase-locking value between channels (Hilbert phases; Lachaux et al. 1999), phase-amplitude
coupling (theta phase vs gamma amplitude; mean vector length normalised by the mean
amplitude, Canolty et al. 2006, https://doi.org/10.1126/science.1128115) and sample entropy
(Richman & Moorman 2000; m = 2, r = 0.2 std, Chebyshev distance, strict ``< r`` like antropy).

All statistics are per channel, so they follow a recording's channel set: for a window
[C, T] :func:`window_stats` returns [C, S] with S = n_bands + 3 (band powers, mean PLV of the
channel with the others, PAC, sample entropy). The cache z-scores them over the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from foundation.errors import ConfigError

__all__ = ["StatsConfig", "relative_band_power", "band_phase", "plv", "channel_plv", "pac_mvl",
           "sample_entropy", "window_stats", "stat_names"]


@dataclass
class StatsConfig:
    """Which neurodynamics statistics are computed (band edges are config; PLV/PAC bands (unverified))."""

    bands: tuple[tuple[float, float], ...] = field(
        default=((1.0, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 80.0)),
        metadata={"help": "band edges in Hz for relative band power (delta, theta, alpha, beta, gamma)"})
    plv_band: tuple[float, float] = field(default=(8.0, 13.0), metadata={"help": "band of the Hilbert phases for PLV"})
    pac_phase_band: tuple[float, float] = field(default=(4.0, 8.0), metadata={"help": "PAC phase band (theta)"})
    pac_amp_band: tuple[float, float] = field(default=(30.0, 80.0), metadata={"help": "PAC amplitude band (gamma)"})
    sampen_m: int = field(default=2, metadata={"help": "sample entropy embedding dimension m"})
    sampen_r: float = field(default=0.2, metadata={"help": "sample entropy tolerance as a fraction of the std"})

    def __post_init__(self) -> None:
        for name, (lo, hi) in [("plv_band", self.plv_band), ("pac_phase_band", self.pac_phase_band),
                               ("pac_amp_band", self.pac_amp_band), *[(f"bands[{i}]", b) for i, b in enumerate(self.bands)]]:
            if not 0 <= lo < hi:
                raise ConfigError(f"stats.{name}: need 0 <= low < high Hz, got ({lo}, {hi})")
        if not self.bands or self.sampen_m < 1 or self.sampen_r <= 0:
            raise ConfigError(f"stats: need >= 1 band, sampen_m >= 1 and sampen_r > 0; got {len(self.bands)} bands, "
                              f"m={self.sampen_m}, r={self.sampen_r}")


def stat_names(cfg: StatsConfig) -> list[str]:
    """Names of the S statistics per channel, in :func:`window_stats` order."""
    return [f"relpow_{lo:g}-{hi:g}Hz" for lo, hi in cfg.bands] + ["plv", "pac", "sampen"]


def relative_band_power(x: np.ndarray, sfreq: float, bands: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Share of the power in each band (Welch, 1-s Hann segments), relative to the span of all bands.

    Args:
        x: signals [..., T].
        sfreq: sampling rate in Hz.
        bands: (low, high) edges in Hz; a band above Nyquist is cut at Nyquist.

    Returns:
        [..., n_bands], each row summing to 1 over non-overlapping bands that tile the span.
    """
    from scipy import signal

    nper = min(x.shape[-1], int(sfreq))
    f, p = signal.welch(x, fs=sfreq, nperseg=nper, axis=-1)
    lo_all, hi_all = min(b[0] for b in bands), max(b[1] for b in bands)
    total = p[..., (f >= lo_all) & (f < hi_all)].sum(-1, keepdims=True) + 1e-30
    return np.stack([p[..., (f >= lo) & (f < hi)].sum(-1) for lo, hi in bands], axis=-1) / total


def _bandpass(x: np.ndarray, sfreq: float, band: tuple[float, float]) -> np.ndarray:
    from scipy import signal

    hi = min(band[1], 0.99 * sfreq / 2)
    sos = signal.butter(4, [band[0], hi], btype="bandpass", fs=sfreq, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


def band_phase(x: np.ndarray, sfreq: float, band: tuple[float, float]) -> np.ndarray:
    """Instantaneous phase [..., T] of the band-passed signal (Hilbert transform)."""
    from scipy import signal

    return np.angle(signal.hilbert(_bandpass(x, sfreq, band), axis=-1))


def plv(phase_a: np.ndarray, phase_b: np.ndarray) -> np.ndarray:
    """Phase-locking value |mean_t exp(i (a - b))| over the last axis; 1 = constant phase lag, ~0 = independent."""
    return np.abs(np.exp(1j * (phase_a - phase_b)).mean(-1))


def channel_plv(x: np.ndarray, sfreq: float, band: tuple[float, float]) -> np.ndarray:
    """Mean PLV of each channel with every other channel: x [C, T] -> [C] (0 for a single channel)."""
    C = x.shape[0]
    if C < 2:
        return np.zeros(C)
    z = np.exp(1j * band_phase(x, sfreq, band))  # [C, T]
    m = np.abs(z @ z.conj().T) / x.shape[-1]  # [C, C] pairwise PLV
    return (m.sum(1) - np.diag(m)) / (C - 1)


def pac_mvl(x: np.ndarray, sfreq: float, phase_band: tuple[float, float], amp_band: tuple[float, float]) -> np.ndarray:
    """Phase-amplitude coupling, normalised mean vector length |mean(A e^{i phi})| / mean(A), in [0, 1].

    Args:
        x: signals [..., T].
        sfreq: sampling rate in Hz.
        phase_band: band of the slow phase phi.
        amp_band: band of the fast amplitude envelope A.

    Returns:
        [...]; near 1 when the fast amplitude peaks at one slow phase, near 0 (about 1/sqrt(T)) when uncoupled.
    """
    from scipy import signal

    phi = band_phase(x, sfreq, phase_band)
    amp = np.abs(signal.hilbert(_bandpass(x, sfreq, amp_band), axis=-1))
    return np.abs((amp * np.exp(1j * phi)).mean(-1)) / (amp.mean(-1) + 1e-30)


def _sampen_counts(x: np.ndarray, m: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matching template pairs (i < j) of length m (B) and m + 1 (A) for signals x [C, T].

    Walks the diagonals j = i + k of the comparison matrix, all channels at once: O(T^2) work but
    only [C, T] memory (3-5x faster than building [C, T, T]).
    """
    C, T = x.shape
    n = T - m  # templates of both lengths start at 0..T-m-1
    B, A = np.zeros(C, dtype=np.int64), np.zeros(C, dtype=np.int64)
    for k in range(1, n):
        close = np.abs(x[:, : T - k] - x[:, k:]) < r[:, None]  # [C, T-k]: |x_i - x_{i+k}| < r
        L = n - k
        match_m = close[:, :L].copy()
        for j in range(1, m):
            match_m &= close[:, j:j + L]
        B += match_m.sum(1)
        A += (match_m & close[:, m:m + L]).sum(1)
    return B, A


def sample_entropy(x: np.ndarray, m: int = 2, r: float = 0.2, finite: bool = False) -> np.ndarray:
    """Sample entropy -log(A / B) per row (Richman & Moorman 2000; antropy's definition).

    B counts pairs of length-m templates closer than r * std (Chebyshev, strict), A the same pairs
    still close at length m + 1, over the T - m templates of each length.

    Args:
        x: signals [T] or [C, T].
        m: embedding dimension.
        r: tolerance as a fraction of each row's std (ddof 0).
        finite: replace undefined values (no match) by the bound -log(max(A, 1) / max(B, 1)) instead of nan/inf.

    Returns:
        [] or [C] float64.
    """
    arr = np.atleast_2d(np.asarray(x, dtype=np.float64))
    B, A = _sampen_counts(arr, m, r * arr.std(axis=-1))
    B, A = B.astype(np.float64), A.astype(np.float64)
    if finite:
        out = -np.log(np.maximum(A, 1) / np.maximum(B, 1))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(B == 0, np.nan, np.where(A == 0, np.inf, -np.log(A / np.maximum(B, 1))))
    return out[0] if np.ndim(x) == 1 else out


def window_stats(x: np.ndarray, sfreq: float, cfg: StatsConfig) -> np.ndarray:
    """All statistics of one window: x [C, T] -> [C, S] float32 (order of :func:`stat_names`)."""
    x = np.asarray(x, dtype=np.float64)
    bp = relative_band_power(x, sfreq, cfg.bands)  # [C, n_bands]
    pl = channel_plv(x, sfreq, cfg.plv_band)  # [C]
    pac = pac_mvl(x, sfreq, cfg.pac_phase_band, cfg.pac_amp_band)  # [C]
    se = sample_entropy(x, cfg.sampen_m, cfg.sampen_r, finite=True)  # [C]
    return np.concatenate([bp, pl[:, None], pac[:, None], se[:, None]], axis=1).astype(np.float32)
