"""EEG preprocessing presets and windowing.

Peers preprocess before pretraining with: resample to 200 Hz, band-pass 0.1-75 Hz
(LaBraM, https://arxiv.org/abs/2405.18765) or 0.3-75 Hz (CBraMod,
https://arxiv.org/abs/2412.07236), a 50 or 60 Hz notch, scaling to 100 uV units.
:class:`PreprocessConfig` holds these as config; :func:`preprocess` applies them to a
:class:`~foundation.modalities.eeg.reader.Recording` through MNE's filters, drops flat
and bad channels (reporting them) and :func:`cut_windows` cuts fixed-length windows,
labelled from annotations when the config names label classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foundation.errors import ConfigError, DataError
from foundation.modalities.eeg.reader import Recording

__all__ = ["PreprocessConfig", "Preprocessed", "preprocess", "cut_windows", "notch_frequencies"]


@dataclass
class PreprocessConfig:
    """Preprocessing preset (defaults follow LaBraM / CBraMod; thresholds are (unverified) sensible values)."""

    sfreq: float = field(default=200.0, metadata={"help": "target sampling rate in Hz (one patch = sfreq samples = 1 s)"})
    l_freq: float = field(default=0.1, metadata={"help": "band-pass low edge in Hz (0: no high-pass)"})
    h_freq: float = field(default=75.0, metadata={"help": "band-pass high edge in Hz; must be below half of both rates"})
    notch: tuple[float, ...] = field(default=(50.0,), metadata={"help": "line-noise notch frequencies in Hz for recordings that do not state their line frequency (empty: none)"})
    notch_line: bool = field(default=True, metadata={"help": "notch a recording that states its line frequency (BIDS PowerLineFrequency) at it and its harmonics below h_freq instead of `notch`"})
    scale: float = field(default=1e4, metadata={"help": "multiplier from volts to model units (1e4: 100 uV units)"})
    clip: float = field(default=10.0, metadata={"help": "clip scaled values to +-clip (10 = +-1 mV at 100 uV units; 0: off)"})
    flat_uv: float = field(default=0.1, metadata={"help": "a channel whose std is below this (uV) is flat and dropped"})
    bad_ratio: float = field(default=8.0, metadata={"help": "drop a channel whose std exceeds this many times the median channel std (0: off)"})
    min_channels: int = field(default=2, metadata={"help": "a recording with fewer good channels is left out"})

    def __post_init__(self) -> None:
        if self.sfreq <= 0:
            raise ConfigError(f"preprocess.sfreq must be > 0, got {self.sfreq}")
        if self.l_freq < 0 or (self.h_freq and self.h_freq <= self.l_freq):
            raise ConfigError(f"preprocess: need 0 <= l_freq < h_freq, got l_freq={self.l_freq}, h_freq={self.h_freq}")
        if self.h_freq >= self.sfreq / 2:
            raise ConfigError(f"preprocess.h_freq={self.h_freq} Hz must be below half of preprocess.sfreq={self.sfreq} "
                              f"(Nyquist {self.sfreq / 2} Hz); lower h_freq or raise sfreq")
        bad = [f for f in self.notch if not 0 < f < self.sfreq / 2]
        if bad:
            raise ConfigError(f"preprocess.notch: {bad} Hz outside (0, {self.sfreq / 2}) Hz")
        if self.scale <= 0 or self.clip < 0 or self.flat_uv < 0 or self.bad_ratio < 0 or self.min_channels < 1:
            raise ConfigError("preprocess: scale must be > 0, clip/flat_uv/bad_ratio >= 0 and min_channels >= 1; got "
                              f"scale={self.scale}, clip={self.clip}, flat_uv={self.flat_uv}, bad_ratio={self.bad_ratio}, "
                              f"min_channels={self.min_channels}")


@dataclass
class Preprocessed:
    """A preprocessed recording: data [C, T] in model units at ``sfreq`` and its channels."""

    data: np.ndarray
    names: list[str]
    positions: np.ndarray
    sfreq: float
    annotations: list[tuple[float, float, str]]
    dropped: dict[str, str]
    notch: tuple[float, ...] = ()  # the notch frequencies applied (Hz)


def notch_frequencies(cfg: PreprocessConfig, line_freq: float | None, sfreq: float) -> tuple[float, ...]:
    """The notch frequencies for a recording sampled at ``sfreq``.

    With ``cfg.notch_line`` and a stated line frequency (BIDS ``PowerLineFrequency``): that
    frequency and its harmonics up to ``cfg.h_freq`` (at least the fundamental); otherwise
    ``cfg.notch``. Frequencies at or above the recording's Nyquist frequency are left out
    (nothing there to remove). An empty ``cfg.notch`` turns the notch off in both cases.
    """
    if not cfg.notch:
        return ()
    if cfg.notch_line and line_freq:
        top = max(cfg.h_freq, line_freq)
        freqs = tuple(line_freq * k for k in range(1, int(top // line_freq) + 1))
    else:
        freqs = tuple(cfg.notch)
    return tuple(f for f in freqs if f < sfreq / 2)


def preprocess(rec: Recording, cfg: PreprocessConfig) -> Preprocessed:
    """Filter, resample, scale and clip a recording; drop flat and bad channels.

    Args:
        rec: a recording from :func:`~foundation.modalities.eeg.reader.read_recording`.
        cfg: the preset.

    Returns:
        A :class:`Preprocessed` with data [C', T'] float32 (C' good channels).

    Raises:
        DataError: NaN/inf samples, a sampling rate too low for the band-pass, or fewer than
            ``cfg.min_channels`` good channels.
    """
    raw, where = rec.raw, str(rec.path)
    data = raw.get_data()
    if not np.isfinite(data).all():
        bad = [n for n, row in zip(rec.names, data) if not np.isfinite(row).all()]
        raise DataError(f"{where}: NaN or infinite samples in channel(s) {bad[:8]}; interpolate or crop them "
                        "(raw.interpolate_bads / raw.crop) or remove the file")
    sf = float(raw.info["sfreq"])
    if cfg.h_freq >= sf / 2:
        raise DataError(f"{where}: sampling rate {sf} Hz is too low for the band-pass up to preprocess.h_freq={cfg.h_freq} Hz "
                        f"(Nyquist {sf / 2} Hz); set preprocess.h_freq below {sf / 2} or leave this file out")
    dropped = dict(rec.dropped)
    std_uv = data.std(axis=1) * 1e6
    good = std_uv >= cfg.flat_uv
    for n in np.asarray(rec.names)[~good]:
        dropped[str(n)] = f"flat (std below {cfg.flat_uv} uV)"
    if cfg.bad_ratio > 0 and good.sum() >= 3:
        ratio = std_uv / np.median(std_uv[good])
        noisy = good & (ratio > cfg.bad_ratio)
        for n, q in zip(np.asarray(rec.names)[noisy], ratio[noisy]):
            dropped[str(n)] = f"bad (std {q:.1f}x the median channel, limit preprocess.bad_ratio={cfg.bad_ratio})"
        good &= ~noisy
    if good.sum() < cfg.min_channels:
        raise DataError(f"{where}: {int(good.sum())} good EEG channel(s) left, fewer than preprocess.min_channels="
                        f"{cfg.min_channels} (dropped: {dropped}); fix the recording or lower min_channels")
    raw = raw.copy().pick([n for n, g in zip(raw.ch_names, good) if g], verbose="error")
    notch = notch_frequencies(cfg, rec.line_freq, sf)
    if notch:
        raw.notch_filter(list(notch), verbose="error")
    raw.filter(cfg.l_freq or None, cfg.h_freq, verbose="error")
    if sf != cfg.sfreq:
        raw.resample(cfg.sfreq, verbose="error")
    out = raw.get_data().astype(np.float64) * cfg.scale
    if cfg.clip:
        np.clip(out, -cfg.clip, cfg.clip, out=out)
    ann = [(float(a["onset"]) - raw.first_time, float(a["duration"]), str(a["description"])) for a in raw.annotations]
    return Preprocessed(out.astype(np.float32), [n for n, g in zip(rec.names, good) if g], rec.positions[good],
                        cfg.sfreq, ann, dropped, notch)


def cut_windows(pre: Preprocessed, window_s: float, labels: tuple[str, ...] = (), stride_s: float | None = None,
                where: str = "recording") -> tuple[np.ndarray, np.ndarray]:
    """Cut fixed-length windows.

    With ``labels`` empty, windows slide over the whole recording (label -1). Otherwise every
    annotation whose description is in ``labels`` gives as many windows as fit in its span,
    labelled with the description's index.

    Args:
        pre: a preprocessed recording (data [C, T]).
        window_s: window length in seconds.
        labels: label class names (annotation descriptions), or empty for unlabelled windows.
        stride_s: hop between windows in seconds (default: window_s).
        where: the file, for messages.

    Returns:
        ``(windows [W, C, n_times] float32, labels [W] int64)``.

    Raises:
        DataError: the recording is shorter than one window, or has none of the label annotations.
    """
    n = int(round(window_s * pre.sfreq))
    hop = int(round((stride_s or window_s) * pre.sfreq))
    T = pre.data.shape[1]
    if T < n:
        raise DataError(f"{where}: recording lasts {T / pre.sfreq:.2f} s, shorter than one window ({window_s} s); "
                        "leave it out or lower data.window_seconds")
    spans: list[tuple[int, int, int]] = []
    if not labels:
        spans.append((0, T, -1))
    else:
        for onset, dur, desc in pre.annotations:
            if desc in labels:
                a = int(round(onset * pre.sfreq))
                spans.append((max(a, 0), min(a + int(round(dur * pre.sfreq)), T), labels.index(desc)))
        if not spans:
            found = sorted({d for _, _, d in pre.annotations})
            raise DataError(f"{where}: no annotation named one of data.labels={list(labels)} (found: {found[:10]}); "
                            "fix data.labels or the events of this file")
    starts, ys = [], []
    for a, b, y in spans:
        for s in range(a, b - n + 1, hop):
            starts.append(s)
            ys.append(y)
    if not starts:
        raise DataError(f"{where}: no labelled span is as long as one window ({window_s} s); lower data.window_seconds")
    idx = np.asarray(starts)[:, None] + np.arange(n)[None, :]  # [W, n_times]
    win = pre.data[:, idx].transpose(1, 0, 2)  # [C, W, n_times] -> [W, C, n_times]
    return np.ascontiguousarray(win, dtype=np.float32), np.asarray(ys, dtype=np.int64)
