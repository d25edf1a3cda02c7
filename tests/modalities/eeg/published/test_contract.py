"""The input contract: channel maps against MNE's own interpolation, bipolar derivations, masking, dropping;
a recording in another montage and sampling rate fine-tuned with LoRA through ``foundation finetune``."""
from __future__ import annotations

import json
import warnings

import mne
import numpy as np
import pytest
import torch

from foundation.modalities.eeg.channels import template_positions
from foundation.modalities.eeg.published.contract import channel_plan

warnings.filterwarnings("ignore", category=UserWarning, module="braindecode")


def _recording(names: list[str]) -> tuple[list[str], np.ndarray]:
    table = template_positions(None)
    return names, np.stack([table[n.upper()][1] for n in names])


def test_interpolated_rows_are_mnes_spherical_splines():
    names, pos = _recording(["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "Cz", "Pz"])
    W, rep = channel_plan(names, pos, ("FP1", "FC3", "CZ", "CP4"), "interpolate")
    assert rep["mapped"] == ["FP1", "CZ"] and rep["interpolated"] == ["FC3", "CP4"]
    assert rep["dropped"] == [n for n in names if n not in ("Fp1", "Cz")]  # outside the table (still in the splines)
    data = np.random.default_rng(0).standard_normal((len(names), 50))
    # MNE directly on the signal: the missing electrodes as bad channels at their template positions
    table = template_positions(None)
    info = mne.create_info(names + ["FC3", "CP4"], 100.0, "eeg")
    raw = mne.io.RawArray(np.vstack([data, np.zeros((2, 50))]), info, verbose="error")
    raw.set_montage(mne.channels.make_dig_montage(
        {**dict(zip(names, pos)), "FC3": table["FC3"][1], "CP4": table["CP4"][1]}, coord_frame="head"), verbose="error")
    raw.info["bads"] = ["FC3", "CP4"]
    raw.interpolate_bads(reset_bads=True, origin=(0.0, 0.0, 0.0), verbose="error")
    want = raw.get_data(picks=["Fp1", "FC3", "Cz", "CP4"])
    np.testing.assert_allclose(W @ data, want, atol=1e-10)
    assert np.abs(want[1]).max() > 0.05  # an interpolated channel carries signal


def test_bipolar_derivations_old_names_masking_and_drops():
    names = ["EEG FP1-REF", "EEG F7-REF", "EEG T3-REF", "EEG T5-REF", "EEG O1-REF", "EEG CZ-REF"]
    canon = ["Fp1", "F7", "T7", "P7", "O1", "Cz"]
    _, pos = _recording(canon)
    W, rep = channel_plan(names, pos, ("FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP2-F8"), "mask")
    x = np.random.default_rng(1).standard_normal((6, 20))
    y = W @ x
    np.testing.assert_allclose(y[0], x[0] - x[1])  # FP1-F7 from the monopolar Fp1 and F7
    np.testing.assert_allclose(y[2], x[2] - x[3])  # T7-P7 from the old names T3 and T5
    np.testing.assert_allclose(y[4], 0.0)  # FP2-F8: both electrodes absent, masked
    assert rep["masked"] == ["FP2", "F8"] and rep["derived"][:2] == ["FP1-F7", "F7-T7"]
    assert rep["dropped"] == ["EEG CZ-REF"]


@pytest.mark.slow
def test_lora_finetune_of_a_labram_folder_on_recordings_of_another_montage_and_rate(tmp_path, capsys):
    """A braindecode LaBraM folder whose table has FC3 and CP4, which no demo montage records: the demo corpus
    (19-, 24- and 32-channel montages at 200-256 Hz) goes through ``foundation finetune --method lora``."""
    import braindecode.models as bd
    from foundation.cli import main

    channels = ["FP1", "FP2", "F3", "F4", "C3", "CZ", "C4", "P3", "PZ", "P4", "O1", "O2", "FC3", "CP4"]
    torch.manual_seed(0)
    bd.Labram(n_chans=len(channels), n_times=800, n_outputs=3, sfreq=200, num_layers=1, num_heads=4,
              chs_info=[{"ch_name": c, "kind": "eeg"} for c in channels]).save_pretrained(tmp_path / "labram-bd")
    out = tmp_path / "run"
    status = main(["finetune", "--from", str(tmp_path / "labram-bd"), "--recipe", "deeperbrain-tiny-probe",
                   "--method", "lora", "--output-dir", str(out),
                   "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.demo.n_subjects=4",
                   "--set", "data.demo.blocks_per_class=1", "--set", "train.steps=2", "--set", "train.warmup_steps=1",
                   "--set", "train.micro_batch_size=4", "--set", "train.progress_bar=false"])
    assert status == 0, capsys.readouterr().err
    base = json.loads((out / "base_load.json").read_text())
    reports = base["channels"]
    assert len(reports) == 4
    for rep in reports:  # every recording: FC3 and CP4 interpolated, the rest mapped, extras dropped
        assert rep["interpolated"] == ["FC3", "CP4"] and len(rep["mapped"]) == 12
    dropped = {len(r["dropped"]) for r in reports}
    assert dropped - {0}, "the 24- and 32-channel montages have channels outside the table"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "interpolated 2" in metrics["load_report"] and "dropped" in metrics["load_report"]
    cfg = json.loads((out / "adapter" / "config.json").read_text())
    contract = cfg["encoder_config"]
    assert cfg["encoder"] == "labram" and contract["sfreq"] == 200.0 and contract["n_times"] == 800
    assert contract["channels"] == channels and contract["scale"] == 1e4
    card = (out / "adapter" / "README.md").read_text()  # the contract is in the model card too
    assert '"missing_channels": "interpolate"' in card and '"sfreq": 200.0' in card
    import foundation

    model = foundation.load(out / "adapter")
    x = torch.randn(2, len(channels), 800)
    assert model(x).shape == (2, 3)
    # foundation predict maps new data through the same contract: the held-out rows come out the same
    assert main(["predict", "--model", str(out / "adapter"), "--data", "deeperbrain-tiny-probe", "--set",
                 f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.demo.n_subjects=4", "--set",
                 "data.demo.blocks_per_class=1", "--out", str(tmp_path / "preds.csv")]) == 0
    import csv

    with open(out / "predictions.csv", newline="") as fh:
        held_out = {r["index"]: r for r in csv.DictReader(fh)}
    with open(tmp_path / "preds.csv", newline="") as fh:
        everything = {r["index"]: r for r in csv.DictReader(fh)}
    assert held_out and all(everything[i]["prediction"] == r["prediction"] and everything[i]["source"] == r["source"]
                            for i, r in held_out.items())
    assert all(abs(float(everything[i][k]) - float(v)) < 1e-5
               for i, r in held_out.items() for k, v in r.items() if k.startswith("prob_"))
