"""EEG explanations: the band partition (checked against scipy's periodogram), planted channels and bands, CSV, topomaps."""
from __future__ import annotations

import csv

import numpy as np
import torch
from torch import nn

from foundation.explain.eeg import (
    BANDS,
    PLANTED,
    BandSum,
    band_split,
    ig_baseline,
    planted_cells,
    planted_share,
    plot_topomaps,
    write_csv,
)
from foundation.explain.methods import integrated_gradients
from foundation.modalities.eeg.channels import template_positions

SF = 200.0
NAMES = ["Fp1", "Fp2", "F3", "Fz", "F4", "C3", "Cz", "C4", "P3", "Pz", "P4", "O1", "Oz", "O2"]


def _positions() -> np.ndarray:
    table = template_positions()
    return np.stack([table[n.upper()][1] for n in NAMES]).astype(np.float32)


def test_band_split_sums_to_the_window_and_matches_the_periodogram():
    from scipy.signal import periodogram

    torch.manual_seed(0)
    x = torch.randn(2, 3, 800, dtype=torch.float64)
    comps = band_split(x, SF)
    assert comps.shape == (2, len(BANDS) + 1, 3, 800)
    torch.testing.assert_close(comps.sum(1), x)
    f, p = periodogram(x.numpy(), fs=SF, window="boxcar", detrend=False, scaling="spectrum", return_onesided=True)
    for b, (lo, hi) in enumerate(BANDS.values()):  # Parseval: a band's energy is its periodogram bins' sum
        energy = (comps[:, b] ** 2).mean(-1).numpy()
        sel = (f >= lo) & (f < hi)
        np.testing.assert_allclose(energy, p[..., sel].sum(-1) * np.where(np.isin(f[sel], [0, SF / 2]), 1, 1).mean(),
                                   rtol=1e-6)
    sine = torch.sin(2 * torch.pi * 10 * torch.arange(800) / SF)[None, None]
    share = (band_split(sine, SF) ** 2).sum(-1)[0, :, 0]
    assert share[list(BANDS).index("alpha")] / share.sum() > 0.999


def test_planted_cells_follow_the_demo_sources():
    pos = _positions()
    rest, bands = planted_cells(pos, "rest")
    assert bands == ["alpha"] and rest[NAMES.index("Oz")] and not rest[NAMES.index("Fz")]
    motor, bands = planted_cells(pos, "motor")
    assert bands == ["beta"] and motor[NAMES.index("C3")] and motor[NAMES.index("C4")] and not motor[NAMES.index("Oz")]
    memory, bands = planted_cells(pos, "memory")
    assert set(bands) == {"theta", "gamma"} and memory[NAMES.index("Fz")]


class _AlphaAtOz(nn.Module):
    """Planted signal: the logit is the alpha power at Oz (an FFT band-pass of the summed bands)."""

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        x = BandSum()(bands)[:, NAMES.index("Oz")]  # [B, T]
        alpha = band_split(x[:, None], SF)[:, list(BANDS).index("alpha"), 0]
        return alpha.square().mean(-1, keepdim=True)


def test_integrated_gradients_find_a_planted_channel_and_band():
    torch.manual_seed(0)
    t = torch.arange(800) / SF
    x = torch.randn(3, len(NAMES), 800) * 0.5 + torch.sin(2 * torch.pi * 10 * t)  # alpha everywhere
    bands = band_split(x, SF)
    attr, delta = integrated_gradients(_AlphaAtOz(), bands, torch.zeros(3, dtype=torch.long), n_steps=16,
                                       baseline=ig_baseline(bands))
    assert delta.abs().max() < 1e-3
    mask = np.ones(len(NAMES), bool)
    for s in range(3):
        share, uniform = planted_share(attr[s].numpy(), _positions(), mask, "rest")
        assert share > 0.99 and share / uniform > 2  # everything on Oz (and its planted neighbours) in alpha


def test_csv_and_topomaps(tmp_path):
    torch.manual_seed(0)
    attr = torch.rand(2, len(BANDS) + 1, 4, 400).numpy()
    masks = np.array([[True, True, True, False]] * 2)
    rows = [{"index": 7, "subject": "sub-01", "label": "rest", "target": 0},
            {"index": 9, "subject": "sub-01", "label": "motor", "target": 1}]
    names = [["Oz", "C3", "Fz", ""]] * 2
    path = write_csv(tmp_path / "a.csv", rows, attr, names, masks, SF)
    with open(path) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 * 3 * (len(BANDS) + 1) * 2  # windows x real channels x bands x seconds
    got = sum(float(r["value"]) for r in table if r["index"] == "7" and r["channel"] == "C3" and r["band"] == "beta")
    np.testing.assert_allclose(got, attr[0, list(BANDS).index("beta"), 1].sum(), rtol=1e-5)
    pos = _positions()[[NAMES.index("Oz"), NAMES.index("C3"), NAMES.index("Fz")]]
    maps = {c: (np.abs(attr[0, :, :3]).sum(-1), pos, ["Oz", "C3", "Fz"]) for c in PLANTED}
    png = plot_topomaps(tmp_path / "topo.png", maps, title="test")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
