"""Neurodynamics statistics against closed forms, known signals and antropy (test-only reference)."""
from __future__ import annotations

import numpy as np
import pytest

from foundation.errors import ConfigError
from foundation.modalities.eeg.neurostats import (StatsConfig, band_phase, channel_plv, pac_mvl, plv,
                                                  relative_band_power, sample_entropy, stat_names, window_stats)

SF = 200.0
T = np.arange(800) / SF
BANDS = StatsConfig().bands


@pytest.mark.parametrize("freq,band", [(2.5, 0), (6.0, 1), (10.0, 2), (21.0, 3), (50.0, 4)])
def test_pure_sine_lands_in_its_band(freq, band):
    rel = relative_band_power(np.sin(2 * np.pi * freq * T), SF, BANDS)
    assert rel.argmax() == band
    assert rel[band] > 0.95
    np.testing.assert_allclose(rel.sum(), 1.0, atol=1e-9)


def test_two_sines_split_power_by_amplitude_squared():
    x = 2.0 * np.sin(2 * np.pi * 10 * T) + 1.0 * np.sin(2 * np.pi * 20 * T)
    rel = relative_band_power(x, SF, BANDS)
    np.testing.assert_allclose(rel[2] / rel[3], 4.0, rtol=0.05)  # power ratio = amplitude ratio squared


def test_plv_is_one_for_a_constant_phase_lag_and_near_zero_for_independent_noise():
    rng = np.random.default_rng(0)
    a = np.sin(2 * np.pi * 10 * T + 0.3 * np.sin(2 * np.pi * 0.7 * T))
    b = np.roll(a, 3)
    pa, pb = band_phase(np.stack([a, b]), SF, (8, 13))
    assert plv(pa, pa) == pytest.approx(1.0)
    assert plv(pa[100:-100], pb[100:-100]) > 0.99
    noise = rng.standard_normal((2, 8000))
    pn = band_phase(noise, SF, (8, 13))
    assert plv(pn[0], pn[1]) < 0.1
    per_channel = channel_plv(np.stack([a, a, rng.standard_normal(800)]), SF, (8, 13))
    assert per_channel[0] > per_channel[2] and per_channel.shape == (3,)


def test_pac_high_for_coupled_low_for_uncoupled():
    rng = np.random.default_rng(1)
    t = np.arange(4000) / SF
    theta = np.sin(2 * np.pi * 6 * t)
    gamma = np.sin(2 * np.pi * 45 * t)
    coupled = theta + 0.5 * (1 + theta) * gamma + 0.05 * rng.standard_normal(t.size)
    uncoupled = theta + 0.5 * gamma + 0.05 * rng.standard_normal(t.size)
    high, low = pac_mvl(np.stack([coupled, uncoupled]), SF, (4, 8), (30, 80))
    assert high > 0.3
    assert low < 0.05


@pytest.mark.parametrize("kind", ["random", "periodic", "random_walk"])
def test_sample_entropy_matches_antropy(kind):
    antropy = pytest.importorskip("antropy", reason="antropy is the test-only reference: pip install antropy")
    rng = np.random.default_rng(2)
    x = {"random": rng.standard_normal(600), "periodic": np.sin(2 * np.pi * 7 * np.arange(600) / SF),
         "random_walk": np.cumsum(rng.standard_normal(600))}[kind]
    np.testing.assert_allclose(sample_entropy(x), antropy.sample_entropy(x), rtol=1e-12)
    np.testing.assert_allclose(sample_entropy(np.stack([x, x[::-1]])),
                               [antropy.sample_entropy(x), antropy.sample_entropy(x[::-1].copy())], rtol=1e-12)


def test_sample_entropy_finite_variant_agrees_where_defined_and_bounds_the_rest():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(300)
    np.testing.assert_allclose(sample_entropy(x, finite=True), sample_entropy(x))
    spikes = np.zeros(40)
    spikes[::7] = 100.0 * np.arange(1, 7)  # isolated spikes of distinct heights: length-3 matches vanish
    assert not np.isfinite(sample_entropy(spikes, m=2, r=0.01)) or sample_entropy(spikes, m=2, r=0.01) >= 0
    assert np.isfinite(sample_entropy(spikes, m=2, r=0.01, finite=True))


def test_window_stats_layout():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 800))
    out = window_stats(x, SF, StatsConfig())
    assert out.shape == (5, len(stat_names(StatsConfig()))) == (5, 8)
    np.testing.assert_allclose(out[:, :5], relative_band_power(x, SF, BANDS), rtol=1e-5)
    np.testing.assert_allclose(out[:, 7], sample_entropy(x), rtol=1e-5)


def test_stats_config_rejects_bad_band():
    with pytest.raises(ConfigError, match=r"stats.bands\[1\].*low < high"):
        StatsConfig(bands=((1.0, 4.0), (8.0, 4.0)))
