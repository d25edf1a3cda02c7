"""Issue 15 for EEG: truncated recordings, channel names and positions from a recipe, left-out files shown."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from foundation.data.cache import DataCache
from foundation.errors import ConfigError, DataError
from foundation.modalities.eeg.cache import EEGCacheBuilder
from foundation.modalities.eeg.dataset import EEGWindows, EEGWindowsConfig
from foundation.modalities.eeg.neurostats import StatsConfig
from foundation.modalities.eeg.preprocess import PreprocessConfig
from foundation.modalities.eeg.reader import check_complete, read_recording
from tests.modalities.eeg._helpers import write_edf

NAMES = ["Fz", "Cz", "Pz", "Oz"]


def _data(seconds: int, sfreq: int = 200, c: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 20, (c, seconds * sfreq))


def write_bdf(path: Path, names: list[str], data_uv: np.ndarray, sfreq: int) -> None:
    """A minimal BDF: 1-s records of 24-bit little-endian samples."""
    C, T = data_uv.shape
    n_rec = T // sfreq

    def f(s: object, n: int) -> bytes:
        return str(s).ljust(n)[:n].encode("ascii")

    head = b"\xffBIOSEMI" + f("X", 80) + f("X", 80) + f("01.01.20", 8) + f("00.00.00", 8)
    head += f(256 * (C + 1), 8) + f("24BIT", 44) + f(n_rec, 8) + f(1, 8) + f(C, 4)
    fields = [(names, 16), (["AgAgCl"] * C, 80), (["uV"] * C, 8), ([-262143] * C, 8), ([262143] * C, 8),
              ([-8388608] * C, 8), ([8388607] * C, 8), ([""] * C, 80), ([sfreq] * C, 8), ([""] * C, 32)]
    for values, width in fields:
        head += b"".join(f(v, width) for v in values)
    dig = np.round(data_uv[:, : n_rec * sfreq] / 262143 * 8388607).astype("<i4")
    dig = dig.reshape(C, n_rec, sfreq).transpose(1, 0, 2).reshape(-1)
    b = dig.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
    path.write_bytes(head + b.tobytes())


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


@pytest.mark.parametrize("fmt", ["edf", "bdf"])
def test_a_truncated_recording_is_a_data_error_naming_the_seconds_missing(tmp_path, fmt):
    path = tmp_path / f"rec.{fmt}"
    (write_edf if fmt == "edf" else write_bdf)(path, NAMES, _data(20), 200)
    bps = 2 if fmt == "edf" else 3
    head = 256 * 5
    _cut(path, head + 12 * 4 * 200 * bps + 17)  # 12 whole records of 20, and part of the 13th
    with pytest.raises(DataError, match=rf"rec\.{fmt}: truncated.*20 s of data.*8 s early.*allow_truncated"):
        read_recording(path)  # mne read it silently as a 12-s recording
    rec = read_recording(path, allow_truncated=True)
    assert rec.truncated == "truncated: 8 of 20 s missing (the intact 12 s were read)"
    assert rec.raw.n_times == 12 * 200


def test_a_whole_file_passes_the_check(tmp_path):
    path = tmp_path / "rec.edf"
    write_edf(path, NAMES, _data(6), 200)
    assert check_complete(path) == "" and read_recording(path).raw.n_times == 1200


def test_truncated_brainvision_names_the_seconds_missing(tmp_path):
    vhdr = tmp_path / "rec.vhdr"
    x = (_data(10) * 10).astype("<i2")  # 0.1 uV resolution
    (tmp_path / "rec.eeg").write_bytes(x.T.tobytes()[: 6 * 200 * 4 * 2])  # multiplexed, cut after 6 s
    chans = "\n".join(f"Ch{i + 1}={n},,0.1,µV" for i, n in enumerate(NAMES))
    vhdr.write_text("Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
                    "DataFile=rec.eeg\nMarkerFile=rec.vmrk\nDataFormat=BINARY\nDataOrientation=MULTIPLEXED\n"
                    f"NumberOfChannels=4\nDataPoints=2000\nSamplingInterval=5000\n[Binary Infos]\nBinaryFormat=INT_16\n"
                    f"[Channel Infos]\n{chans}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rec\.vhdr: truncated.*10 s of data.*4 s early"):
        check_complete(vhdr)
    assert check_complete(vhdr, allow_truncated=True).startswith("truncated: 4 of 10 s missing")


def test_allow_truncated_keeps_the_intact_part_and_reports_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_edf(src / "good.edf", NAMES, _data(16), 200)
    write_edf(src / "cut.edf", NAMES, _data(16), 200)
    _cut(src / "cut.edf", 256 * 5 + 9 * 4 * 200 * 2)
    files = sorted(src.iterdir())
    strict = DataCache(tmp_path / "c1", EEGCacheBuilder(PreprocessConfig(), StatsConfig(), 4.0)).prepare(files)
    reason = next(e["reason"] for e in strict["sources"] if e["status"] == "left_out")
    assert strict["n_kept"] == 1 and "cut.edf: truncated" in reason and "7 s early" in reason
    lenient = EEGCacheBuilder(PreprocessConfig(), StatsConfig(), 4.0, allow_truncated=True)
    report = DataCache(tmp_path / "c2", lenient).prepare(files)
    cut = next(e for e in report["sources"] if e["source"].endswith("cut.edf"))
    assert report["n_kept"] == 2 and cut["notes"] == ["truncated: 7 of 16 s missing (the intact 9 s were read)"]


def test_channel_map_renames_and_channel_types_drop_non_eeg(tmp_path):
    path = tmp_path / "rec.edf"
    write_edf(path, ["Chan 1", "Chan 2", "Chan 3", "HEOG"], _data(6), 200)
    with pytest.raises(DataError, match="none of the channel names.*data.channel_map"):
        read_recording(path)
    rec = read_recording(path, channel_map={"Chan 1": "Fz", "Chan 2": "Cz", "Chan 3": "Pz"},
                         channel_types={"HEOG": "eog"})
    assert rec.names == ["Fz", "Cz", "Pz"] and "not EEG" in rec.dropped["HEOG"]
    with pytest.raises(DataError, match="channel_map renames onto"):
        read_recording(path, channel_map={"Chan 1": "Chan 2"})


def test_channel_settings_are_checked_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match="data.channel_types.*'HEOG': 'eyes'"):
        EEGWindowsConfig(source=str(tmp_path), channel_types={"HEOG": "eyes"})


def test_a_montage_file_places_channels_a_template_does_not_know(tmp_path):
    path = tmp_path / "rec.edf"
    write_edf(path, ["E1", "E2", "E3"], _data(6, c=3), 200)
    sfp = tmp_path / "cap.sfp"
    sfp.write_text("E1 0.0 8.0 4.0\nE2 -6.0 0.0 7.0\nE3 6.0 0.0 7.0\n")  # centimetres
    rec = read_recording(path, montage=str(sfp))
    assert rec.names == ["E1", "E2", "E3"] and rec.position_source == str(sfp)
    import mne

    want = mne.channels.read_custom_montage(sfp).get_positions()["ch_pos"]
    np.testing.assert_allclose(rec.positions, np.stack([want[n] for n in rec.names]), rtol=1e-5)
    (tmp_path / "bad.sfp").write_text("this is not a montage\n")
    with pytest.raises(DataError, match=r"data.montage: .*bad\.sfp"):
        read_recording(path, montage=str(tmp_path / "bad.sfp"))
    with pytest.raises(DataError, match="does not exist"):
        read_recording(path, montage=str(tmp_path / "missing.elc"))


def test_left_out_recordings_are_logged_on_every_prepare(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    write_edf(src / "good.edf", NAMES, _data(12), 200)
    (src / "broken.edf").write_bytes(b"not an edf at all")
    cfg = EEGWindowsConfig(source=str(src), cache_dir=str(tmp_path / "cache"), window_seconds=4.0)
    for _ in range(2):  # the second prepare reuses the cache and still says what was left out
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="foundation.data.cache"):
            EEGWindows.prepare(cfg)
        assert "1 of 2 source(s) left out of the eeg cache" in caplog.text
        assert "broken.edf" in caplog.text and str(tmp_path / "cache" / "report.json") in caplog.text


def test_flat_segments_are_left_out_and_counted_and_a_dead_recording_is_left_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    x = _data(24)
    x[:, 8 * 200:16 * 200] = 0.0  # the amplifier was off for 8 s: two 4-s windows of zeros
    write_edf(src / "gap.edf", NAMES, x, 200)
    write_edf(src / "dead.edf", NAMES, np.zeros((4, 12 * 200)), 200)
    report = DataCache(tmp_path / "cache", EEGCacheBuilder(PreprocessConfig(l_freq=0.0), StatsConfig(), 4.0)).prepare(
        sorted(src.iterdir()))
    by = {Path(e["source"]).name: e for e in report["sources"]}
    assert by["dead.edf"]["status"] == "left_out" and "flat" in by["dead.edf"]["reason"]
    assert by["gap.edf"]["status"] == "kept" and by["gap.edf"]["notes"] == [
        "2 of 6 windows left out: flat (all channels constant or zero)"]
    index = DataCache(tmp_path / "cache", EEGCacheBuilder(PreprocessConfig(l_freq=0.0), StatsConfig(), 4.0)).index()
    assert index["entries"][0]["meta"]["n_windows"] == 4
