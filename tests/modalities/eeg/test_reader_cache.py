"""Reading (FIF, EDF, BIDS events), preprocessing errors, and the cache with its report of left-out files."""
from __future__ import annotations

import json

import mne
import numpy as np
import pytest
import torch

from foundation.errors import ConfigError, DataError
from foundation.data.cache import DataCache
from foundation.modalities.eeg.cache import EEGCacheBuilder
from foundation.modalities.eeg.dataset import EEGWindowsConfig, EEGWindows
from foundation.modalities.eeg.demo_corpus import CLASSES, make_demo_corpus
from foundation.modalities.eeg.neurostats import StatsConfig, window_stats
from foundation.modalities.eeg.preprocess import PreprocessConfig, cut_windows, preprocess
from foundation.modalities.eeg.reader import find_recordings, read_recording
from tests.modalities.eeg._helpers import TINY_DEMO, tiny_data_config, write_edf


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny demo corpus plus one bad file of every kind, in one folder."""
    root = tmp_path_factory.mktemp("eeg")
    files = find_recordings(make_demo_corpus(root / "demo", TINY_DEMO))
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.edf").write_bytes(b"\x00garbage" * 40)
    good = files[1].read_bytes()
    (bad / "truncated_raw.fif").write_bytes(good[: len(good) // 3])
    sf = 200.0
    info = mne.create_info(["Fz", "Cz", "Pz", "Oz"], sf, "eeg")
    rng = np.random.default_rng(0)
    mne.io.RawArray(rng.standard_normal((4, 200)) * 1e-5, info).save(bad / "short_raw.fif", verbose="error")
    nan = rng.standard_normal((4, 2000)) * 1e-5
    nan[2, 100:200] = np.nan
    mne.io.RawArray(nan, info).save(bad / "nans_raw.fif", verbose="error")
    mne.io.RawArray(rng.standard_normal((2, 2000)) * 1e-5, mne.create_info(["X1", "X2"], sf, "eeg")).save(
        bad / "unknown_raw.fif", verbose="error")
    mne.io.RawArray(rng.standard_normal((4, 1000)) * 1e-5, mne.create_info(["Fz", "Cz", "Pz", "Oz"], 100.0, "eeg")).save(
        bad / "lowrate_raw.fif", verbose="error")
    return root, files, bad


def test_find_recordings_in_bids_tree(corpus):
    root, files, _ = corpus
    assert find_recordings(root / "demo") == sorted(files)
    with pytest.raises(DataError, match="does not exist"):
        find_recordings(root / "nope")


def test_reader_drops_non_eeg_and_canonicalises(corpus):
    _, files, _ = corpus
    rec = read_recording(files[0])  # layout tuh19: "EEG FP1-REF" names, old T3..T6, plus an EOG channel
    assert rec.subject == "01" and rec.session == "01"
    assert "EOG1" in rec.dropped and "not EEG" in rec.dropped["EOG1"]
    assert rec.names[:3] == ["Fp1", "Fp2", "F7"] and "T7" in rec.names and "P8" in rec.names
    assert rec.positions.shape == (19, 3) and rec.position_source.endswith("1005")
    assert read_recording(files[2]).position_source == "digitisation"


def test_edf_with_tuh_names_and_bids_events(tmp_path):
    rng = np.random.default_rng(0)
    names = ["EEG FP1-REF", "EEG C3-REF", "EEG O1-REF", "EKG1"]
    folder = tmp_path / "sub-09" / "eeg"
    folder.mkdir(parents=True)
    path = folder / "sub-09_task-x_eeg.edf"
    write_edf(path, names, rng.standard_normal((4, 2000)) * 20, 200)
    (folder / "sub-09_task-x_events.tsv").write_text("onset\tduration\ttrial_type\n0\t4\trest\n4\t4\tmotor\n")
    assert mne.io.read_raw_edf(path, verbose="error").ch_names == names  # the hand-written EDF is valid
    rec = read_recording(path)
    assert rec.subject == "09" and rec.names == ["Fp1", "C3", "O1"] and "EKG1" in rec.dropped
    pre = preprocess(rec, PreprocessConfig())
    win, y = cut_windows(pre, 4.0, ("rest", "motor"))
    assert win.shape == (2, 3, 800) and y.tolist() == [0, 1]


@pytest.mark.parametrize("name,match", [
    ("corrupt.edf", r"corrupt\.edf: mne could not read it .*re-export it or remove it"),
    ("truncated_raw.fif", r"truncated_raw\.fif: mne could not read it"),
    ("unknown_raw.fif", r"unknown_raw\.fif: none of the channel names \['X1', 'X2'\]"),
])
def test_unreadable_files_raise_data_error(corpus, name, match):
    with pytest.raises(DataError, match=match):
        read_recording(corpus[2] / name)


def test_preprocessing_errors(corpus):
    bad = corpus[2]
    with pytest.raises(DataError, match=r"nans_raw\.fif: NaN or infinite samples in channel\(s\) \['Pz'\]"):
        preprocess(read_recording(bad / "nans_raw.fif"), PreprocessConfig())
    with pytest.raises(DataError, match=r"lowrate_raw\.fif: sampling rate 100.0 Hz is too low .*h_freq=75.0"):
        preprocess(read_recording(bad / "lowrate_raw.fif"), PreprocessConfig())
    pre = preprocess(read_recording(bad / "short_raw.fif"), PreprocessConfig())
    with pytest.raises(DataError, match=r"short_raw\.fif: recording lasts 1.00 s, shorter than one window \(4.0 s\)"):
        cut_windows(pre, 4.0, where=str(bad / "short_raw.fif"))
    with pytest.raises(ConfigError, match="h_freq=75.0 Hz must be below half of preprocess.sfreq=100.0"):
        PreprocessConfig(sfreq=100.0)


def test_flat_and_noisy_channels_are_dropped_and_reported(corpus):
    _, files, _ = corpus
    rec = read_recording(files[1])  # subject 2 has a flat and a very noisy channel
    pre = preprocess(rec, PreprocessConfig())
    reasons = list(pre.dropped.values())
    assert any(r.startswith("flat") for r in reasons) and any(r.startswith("bad") for r in reasons)
    assert pre.data.shape[0] == len(rec.names) - 2 == len(pre.names) == pre.positions.shape[0]
    assert np.abs(pre.data).max() <= 10.0  # clipped at +-1 mV in 100 uV units


def test_cache_keeps_good_files_and_reports_bad_ones(corpus, tmp_path):
    root, files, bad = corpus
    all_files = files + sorted(bad.iterdir())
    builder = EEGCacheBuilder(PreprocessConfig(), StatsConfig(), 4.0, CLASSES)
    report = DataCache(tmp_path / "cache", builder).prepare(all_files)
    assert [s["source"] for s in report["sources"] if s["status"] == "kept"] == [str(f) for f in files]
    excluded = {s["source"].rsplit("/", 1)[1]: s["reason"] for s in report["sources"] if s["status"] == "left_out"}
    assert set(excluded) == {"corrupt.edf", "truncated_raw.fif", "short_raw.fif", "nans_raw.fif", "unknown_raw.fif",
                             "lowrate_raw.fif"}
    assert "shorter than one window" in excluded["short_raw.fif"] and "NaN" in excluded["nans_raw.fif"]
    assert json.loads((tmp_path / "cache" / "report.json").read_text()) == report

    cfg = EEGWindowsConfig(source=str(root / "demo"), cache_dir=str(tmp_path / "cache"), labels=CLASSES)
    with pytest.raises(DataError, match="built from other sources"):  # the cache holds the bad files too
        EEGWindows(cfg)
    DataCache(tmp_path / "cache", builder).prepare(files)
    ds = EEGWindows(cfg)
    assert len(ds) == 3 * 3 * 2
    item = ds[0]
    C = ds.index["max_channels"]
    assert item["x"].shape == (C, 800) and item["pos"].shape == (C, 3) and item["stats"].shape == (C, 8)
    n_real = [int(ds[i]["chan_mask"].sum()) for i in range(len(ds))]
    assert sorted(set(n_real)) == sorted({len(e["meta"]["channels"]) for e in ds.index["entries"]})
    assert len(set(n_real)) == 3  # three montages, three channel counts
    # the cached statistics are the z-scored statistics of the cached (unmasked) window
    rec = ds.index["entries"][0]["meta"]
    raw_stats = window_stats(item["x"][: len(rec["channels"])].numpy(), 200.0, StatsConfig())
    z = (raw_stats - np.array(ds.index["stats_mean"])) / np.array(ds.index["stats_std"])
    np.testing.assert_allclose(item["stats"][: len(rec["channels"])].numpy(), z, atol=0.05)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["x"].dtype == torch.float32 and batch["chan_mask"].dtype == torch.bool


def test_dataset_prepare_builds_once_and_reuses(tmp_path):
    cfg = tiny_data_config(tmp_path / "c")
    report = EEGWindows.prepare(cfg)
    assert report["n_left_out"] == 0 and report["n_kept"] == 3
    stamp = (tmp_path / "c" / "index.json").stat().st_mtime_ns
    EEGWindows.prepare(cfg)
    assert (tmp_path / "c" / "index.json").stat().st_mtime_ns == stamp
    ds = EEGWindows(cfg)
    assert len(ds) == 18
    assert "18 windows of 4 s at 200 Hz from 3 recordings of 3 subjects" in ds.describe()
    only = EEGWindows(EEGWindowsConfig(**{**cfg.__dict__, "subjects": ("02",)}))
    assert len(only) == 6 and set(only.subject_ids[only.rows]) == {ds.subjects.index("02")}
    with pytest.raises(DataError, match=r"data.subjects: \['77'\] are not in the cache"):
        EEGWindows(EEGWindowsConfig(**{**cfg.__dict__, "subjects": ("77",)}))
    with pytest.raises(DataError, match="not a complete eeg cache"):
        EEGWindows(tiny_data_config(tmp_path / "missing"))
