"""BIDS EEG written by mne_bids.write_raw_bids reads back with events, bad channels, electrodes and line frequency."""
from __future__ import annotations

from datetime import datetime, timezone

import mne
import numpy as np
import pytest

from foundation.modalities.eeg.preprocess import PreprocessConfig, notch_frequencies, preprocess
from foundation.modalities.eeg.reader import find_recordings, read_recording

pytest.importorskip("pybv")  # mne_bids writes BrainVision through pybv (test dependency)

EEG = ["Fp1", "Fp2", "C3", "Cz", "C4", "O1", "O2"]
SFREQ = 250.0


def _raw(line_freq=60.0, seed=0):
    """7 EEG channels + EOG, a 60 Hz hum, a measurement date, annotations, a bad channel, non-template positions."""
    rng = np.random.default_rng(seed)
    info = mne.create_info(EEG + ["EOG1"], SFREQ, ["eeg"] * len(EEG) + ["eog"])
    t = np.arange(int(SFREQ * 30)) / SFREQ
    data = rng.normal(0, 10e-6, (len(EEG) + 1, t.size)) + 20e-6 * np.sin(2 * np.pi * 60 * t)
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_meas_date(datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc))
    raw.set_annotations(mne.Annotations([2.0, 9.0, 15.0], [4.0, 0.0, 6.0], ["rest", "blink", "motor"],
                                        orig_time=raw.info["meas_date"]))
    raw.info["bads"] = ["C4"]
    raw.info["line_freq"] = line_freq
    template = mne.channels.make_standard_montage("colin27_1020").get_positions()
    ch_pos = {n: template["ch_pos"][n] + rng.normal(0, 0.004, 3) for n in EEG}  # moved off the template
    mont = mne.channels.make_dig_montage(ch_pos=ch_pos, nasion=template["nasion"], lpa=template["lpa"],
                                         rpa=template["rpa"], coord_frame=template["coord_frame"])
    raw.set_montage(mont, verbose="error")
    return raw


@pytest.fixture(scope="module")
def bids_tree(tmp_path_factory):
    import mne_bids

    root = tmp_path_factory.mktemp("bids")
    raw = _raw()
    src = root.parent / f"{root.name}_src_raw.fif"
    raw.save(src, overwrite=True, verbose="error")
    bp = mne_bids.BIDSPath(subject="07", session="02", task="motor", run="1", datatype="eeg", root=root)
    mne_bids.write_raw_bids(mne.io.read_raw_fif(src, verbose="error"), bp, format="BrainVision", overwrite=True,
                            verbose="error")
    events = bp.copy().update(suffix="events", extension=".tsv").fpath
    lines = events.read_text().splitlines()
    head = lines[0].split("\t")
    for i, line in enumerate(lines[1:], 1):  # a valid BIDS "n/a" duration on the blink
        cells = line.split("\t")
        if cells[head.index("trial_type")] == "blink":
            cells[head.index("duration")] = "n/a"
            lines[i] = "\t".join(cells)
    events.write_text("\n".join(lines) + "\n")
    return root, raw, bp


def test_bids_recording_reads_back_with_everything_honoured(bids_tree):
    import mne_bids

    root, raw, bp = bids_tree
    files = find_recordings(root)
    assert [f.name for f in files] == ["sub-07_ses-02_task-motor_run-1_eeg.vhdr"]
    rec = read_recording(files[0])
    ref = mne_bids.read_raw_bids(bp, verbose="error")
    assert (rec.subject, rec.session) == ("07", "02")
    assert ref.info["bads"] == ["C4"] and "C4" not in rec.names and "marked bad" in rec.dropped["C4"]
    assert "EOG1" in rec.dropped and rec.names == [n for n in EEG if n != "C4"]
    assert rec.line_freq == 60.0 == ref.info["line_freq"]
    got = [(round(a["onset"] - rec.raw.first_time, 6), a["duration"], a["description"]) for a in rec.raw.annotations]
    assert got == [(2.0, 4.0, "rest"), (9.0, 0.0, "blink"), (15.0, 6.0, "motor")]
    assert rec.raw.info["meas_date"] == raw.info["meas_date"]
    assert rec.position_source == "digitisation"  # electrodes.tsv, not the template
    want = np.array([raw.info["chs"][raw.ch_names.index(n)]["loc"][:3] for n in rec.names])
    ref_pos = np.array([ref.info["chs"][ref.ch_names.index(n)]["loc"][:3] for n in rec.names])
    np.testing.assert_allclose(rec.positions, ref_pos, atol=1e-7)
    np.testing.assert_allclose(rec.positions, want, atol=1e-4)  # electrodes.tsv keeps 0.1 mm


def test_line_frequency_sets_the_notch(bids_tree):
    from scipy.signal import welch

    root, _, _ = bids_tree
    rec = read_recording(find_recordings(root)[0])
    cfg = PreprocessConfig(sfreq=250.0, h_freq=100.0, clip=0, bad_ratio=0)
    pre = preprocess(rec, cfg)
    assert pre.notch == (60.0,)
    f, p = welch(pre.data, fs=250.0, nperseg=1000)
    off = preprocess(rec, PreprocessConfig(sfreq=250.0, h_freq=100.0, clip=0, bad_ratio=0, notch_line=False))
    assert off.notch == (50.0,)
    _, p_off = welch(off.data, fs=250.0, nperseg=1000)
    k = np.argmin(np.abs(f - 60))
    assert p[:, k].mean() < 0.01 * p_off[:, k].mean()  # the 60 Hz hum is gone only with the stated line frequency
    assert notch_frequencies(PreprocessConfig(h_freq=75.0), 50.0, 1000.0) == (50.0,)
    assert notch_frequencies(PreprocessConfig(sfreq=500.0, h_freq=200.0), 60.0, 1000.0) == (60.0, 120.0, 180.0)
    assert notch_frequencies(PreprocessConfig(notch=()), 60.0, 1000.0) == ()
    assert notch_frequencies(PreprocessConfig(), None, 1000.0) == (50.0,)


def test_events_tsv_outside_bids_merges_with_dated_annotations(tmp_path):
    """A file that carries annotations and a measurement date, plus a sibling events.tsv with an n/a duration."""
    raw = _raw()
    raw.info["bads"] = []
    folder = tmp_path / "sub-03" / "eeg"
    folder.mkdir(parents=True)
    path = folder / "sub-03_task-x_eeg.fif"
    raw.save(path, verbose="error")
    (folder / "sub-03_task-x_events.tsv").write_text("onset\tduration\ttrial_type\n20\tn/a\tcue\n22\t3\tmotor\n")
    rec = read_recording(path)
    got = [(round(a["onset"] - rec.raw.first_time, 6), a["duration"], a["description"]) for a in rec.raw.annotations]
    assert got == [(2.0, 4.0, "rest"), (9.0, 0.0, "blink"), (15.0, 6.0, "motor"), (20.0, 0.0, "cue"), (22.0, 3.0, "motor")]


def test_bids_sidecars_without_the_eeg_json_are_refused(bids_tree, tmp_path):
    import shutil

    from foundation.errors import DataError

    root, _, _ = bids_tree
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    next(copy.rglob("*_eeg.json")).unlink()
    with pytest.raises(DataError, match="not its required sidecar .*_eeg.json"):
        read_recording(find_recordings(copy)[0])
