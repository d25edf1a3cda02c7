"""EEG explanations: attributions per channel, per frequency band and over time; topomaps; a CSV; ground truth.

Bands come from an exact partition of each window's spectrum (rFFT masks, :func:`band_split`): the band
components plus the remainder (below delta, above gamma) sum back to the window, so the model sees its own
input and an attribution method run on the components ``[B, nb, C, T]`` gives every (band, channel, sample)
its share; integrated gradients stays complete over them. Band edges are the suite's (REFERENCE: delta 1-4,
theta 4-8, alpha 8-13, beta 13-30, gamma 30-80 Hz).

Ground truth (:func:`planted_cells`, :func:`planted_share`): the demo corpus plants each class at known
sources (:mod:`foundation.modalities.eeg.demo_corpus`): rest = alpha around Oz, motor = beta around C3/C4,
memory = theta and gamma around Fz, falling as exp(-d / 4 cm). A channel is "planted" for a class when that
weight is >= ``min_weight``; the share of |attribution| on the planted (channel, band) cells is compared with
their share under a uniform spread.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foundation.atomic import atomic_path
from foundation.errors import DataError
from foundation.explain.figure import pyplot, save_figure

__all__ = [
    "BANDS",
    "PLANTED",
    "BandSum",
    "band_split",
    "channel_names",
    "ig_baseline",
    "planted_cells",
    "planted_share",
    "plot_topomaps",
    "write_csv",
]

BANDS: dict[str, tuple[float, float]] = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0),
                                         "beta": (13.0, 30.0), "gamma": (30.0, 80.0)}
"""Band edges in Hz, lower edge included, upper excluded."""
REST = "other"
"""Name of the remainder component (below delta, above gamma, DC)."""
PLANTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rest": (("Oz",), ("alpha",)), "motor": (("C3", "C4"), ("beta",)), "memory": (("Fz",), ("theta", "gamma"))}
"""Class -> (source electrodes, bands) of the demo corpus's planted signal."""


def band_split(x: torch.Tensor, sfreq: float) -> torch.Tensor:
    """``x [B, C, T]`` -> components ``[B, len(BANDS) + 1, C, T]`` (bands in order, then the remainder); they sum to x."""
    T = x.shape[-1]
    spec = torch.fft.rfft(x.double(), dim=-1)  # [B, C, F]
    freqs = torch.fft.rfftfreq(T, 1.0 / sfreq)
    masks = [(freqs >= lo) & (freqs < hi) for lo, hi in BANDS.values()]
    masks.append(~torch.stack(masks).any(0))
    comps = [torch.fft.irfft(spec * m.to(spec.dtype), n=T, dim=-1) for m in masks]
    return torch.stack(comps, 1).to(x.dtype)  # nb x [B, C, T] -> [B, nb, C, T]


def ig_baseline(bands: torch.Tensor) -> torch.Tensor:
    """Integrated-gradients reference of band components ``[B, nb, C, T]``: the five bands zeroed, the remainder kept.

    DeeperBrain divides each window by its own scale, so its output is constant along the ray from the zero
    window and undefined at it; integrated gradients from zero would sum to ~0 instead of f(x) - f(0). From
    this reference the bands' attributions sum to f(x) - f(remainder) (completeness holds), and the remainder
    gets none.
    """
    base = torch.zeros_like(bands)
    base[:, -1] = bands[:, -1]
    return base


class BandSum(nn.Module):
    """``[B, nb, C, T]`` band components -> ``[B, C, T]`` (their sum: the window)."""

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        return bands.sum(1)


def band_names() -> list[str]:
    return [*BANDS, REST]


def channel_names(dataset: Any, row: int) -> list[str]:
    """Channel names of the recording that window ``row`` (a dataset index) comes from, in cache order."""
    r = int(dataset.rows[row])
    for entry in dataset.index["entries"]:
        meta = entry["meta"]
        if meta["first_window"] <= r < meta["first_window"] + meta["n_windows"]:
            return list(meta["channels"])
    raise DataError(f"{dataset.cache.folder}: window {r} belongs to no cached recording; rebuild the cache")


def planted_cells(pos: np.ndarray, class_name: str, min_weight: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """Channels (bool ``[C]``) near the class's planted sources, and the planted bands.

    Args:
        pos: electrode positions ``[C, 3]`` in metres (the recording's own).
        class_name: a demo class (``rest``, ``motor``, ``memory``).
        min_weight: a channel is planted when exp(-d / 4 cm) >= this for some source.
    """
    from foundation.modalities.eeg.channels import template_positions

    if class_name not in PLANTED:
        raise DataError(f"explain: class {class_name!r} has no planted signal in the demo corpus; known: "
                        f"{', '.join(PLANTED)}")
    table = template_positions()
    sources, bands = PLANTED[class_name]
    w = np.max([np.exp(-np.linalg.norm(pos - table[s.upper()][1], axis=1) / 0.04) for s in sources], axis=0)
    return w >= min_weight, list(bands)


def planted_share(attr: np.ndarray, pos: np.ndarray, chan_mask: np.ndarray, class_name: str,
                  bands: bool = True) -> tuple[float, float]:
    """(share of attribution on the planted cells, the same share under a uniform spread).

    A cell's (band x channel) attribution is |sum over time|: per-sample attributions of a band oscillate in
    sign, and their sum is the band's contribution (what completeness adds up).

    Args:
        attr: one window's attributions ``[nb, C, T]`` (bands) or ``[C, T]`` / ``[1, C, T]`` (channels only,
            ``bands=False``).
        pos: ``[C, 3]``; chan_mask: ``[C]`` real channels.
    """
    chans, planted_bands = planted_cells(pos, class_name)
    chans = chans & chan_mask
    if not bands and attr.ndim == 3:  # [1, C, T]: a method without bands
        attr = attr.sum(0)
    a = np.abs(attr.sum(-1))  # a cell's total (signed sum over time), then its size: [nb, C] or [C]
    if bands:
        names = band_names()
        rows = np.array([n in planted_bands for n in names[:len(BANDS)]])  # the remainder is never planted
        a = a[:len(BANDS)][:, chan_mask]  # [5, C_real]
        cell = rows[:, None] & chans[chan_mask][None, :]
    else:
        a = a[chan_mask]
        cell = chans[chan_mask]
    total = a.sum()
    return (float(a[cell].sum() / total) if total > 0 else 0.0), float(cell.mean())


def write_csv(path: str | Path, rows: list[dict[str, Any]], attrs: np.ndarray, names: list[list[str]],
              chan_masks: np.ndarray, sfreq: float) -> Path:
    """Long-format CSV: index, subject, label, target, channel, band, second, value (sum over the second's samples).

    Args:
        rows: per window: ``index``, ``subject``, ``label``, ``target``.
        attrs: ``[S, nb, C, T]`` attributions.
        names: channel names per window; chan_masks: ``[S, C]``.
    """
    import csv
    import io

    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["index", "subject", "label", "target", "channel", "band", "second", "value"])
    S, nb, C, T = attrs.shape
    sec = round(sfreq)
    per_sec = attrs[..., : (T // sec) * sec].reshape(S, nb, C, T // sec, sec).sum(-1)  # [S, nb, C, P]
    bnames = band_names() if nb == len(BANDS) + 1 else ["all"]
    for s, row in enumerate(rows):
        for c in np.nonzero(chan_masks[s])[0]:
            for b in range(nb):
                for p in range(per_sec.shape[-1]):
                    out.writerow([row["index"], row["subject"], row["label"], row["target"], names[s][c], bnames[b], p,
                                  f"{per_sec[s, b, c, p]:.6g}"])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


def plot_topomaps(path: str | Path, maps: dict[str, tuple[np.ndarray, np.ndarray, list[str]]], title: str = "") -> Path:
    """A grid of ``mne.viz.plot_topomap``: one row per class, one column per band, from each recording's positions.

    Args:
        maps: class -> (mean |attribution| ``[nb, C]`` of real channels, their positions ``[C, 3]`` in metres
            (head frame), their names).
    """
    import mne

    plt = pyplot()
    nb = next(iter(maps.values()))[0].shape[0]
    bnames = band_names()[:nb] if nb > 1 else ["all bands"]
    fig, axes = plt.subplots(len(maps), nb, figsize=(1.6 * nb + 0.8, 1.7 * len(maps) + 0.5), squeeze=False)
    for i, (cls, (m, pos, names)) in enumerate(maps.items()):
        info = mne.create_info(list(names), 200.0, "eeg")
        montage = mne.channels.make_dig_montage(ch_pos=dict(zip(names, np.asarray(pos, float))), coord_frame="head")
        info.set_montage(montage, on_missing="ignore", verbose="error")
        vmax = float(m.max()) or 1.0
        for j in range(nb):
            ax = axes[i, j]
            mne.viz.plot_topomap(m[j], info, axes=ax, show=False, cmap="Reds", vlim=(0, vmax), contours=0,
                                 sensors=True)
            if i == 0:
                ax.set_title(bnames[j], fontsize=9)
        axes[i, 0].text(-0.25, 0.5, cls, transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
