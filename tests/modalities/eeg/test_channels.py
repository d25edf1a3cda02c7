"""Channel-name canonicalisation and 3D positions (MNE template montages and digitisation)."""
from __future__ import annotations

import mne
import numpy as np
import pytest

from foundation.errors import DataError
from foundation.modalities.eeg.channels import canonical_name, channel_positions, template_montage_name, template_positions


@pytest.mark.parametrize("raw,expected", [
    ("EEG FP1-REF", "Fp1"), ("EEG T3-REF", "T7"), ("T4", "T8"), ("t5", "P7"), ("EEG T6-LE", "P8"),
    ("fz", "Fz"), ("CZ", "Cz"), ("FP1-F7", "Fp1-F7"), ("EEG C3-REF", "C3"), ("ECG", None), ("EEG 23", None),
    ("Status", None),
])
def test_canonical_names(raw, expected):
    assert canonical_name(raw) == expected


def test_template_name_follows_the_installed_mne():
    name = template_montage_name()
    assert name in mne.channels.get_builtin_montages()
    expected = "colin27_1005" if "colin27_1005" in mne.channels.get_builtin_montages() else "standard_1005"
    assert name == expected


def test_template_positions_and_bipolar_midpoint():
    info = mne.create_info(["EEG FP1-REF", "T3", "FP1-F7", "ECG2"], 200.0, "eeg")
    kept, names, pos, source = channel_positions(info)
    table = template_positions()
    assert kept == [0, 1, 2] and names == ["Fp1", "T7", "Fp1-F7"] and source == template_montage_name()
    np.testing.assert_allclose(pos[0], table["FP1"][1], rtol=1e-6)
    np.testing.assert_allclose(pos[1], table["T7"][1], rtol=1e-6)
    np.testing.assert_allclose(pos[2], (table["FP1"][1] + table["F7"][1]) / 2, rtol=1e-6)


def test_digitised_positions_win_over_the_template():
    names = ["Fz", "Cz", "Pz"]
    dig = {n: np.array([0.01 * i, 0.02, 0.03 + i * 0.01]) for i, n in enumerate(names)}
    info = mne.create_info(names, 200.0, "eeg")
    info.set_montage(mne.channels.make_dig_montage(dig, coord_frame="head"))
    kept, got_names, pos, source = channel_positions(info)
    assert source == "digitisation" and got_names == names
    np.testing.assert_allclose(pos, np.stack([dig[n] for n in names]), atol=1e-6)


def test_all_channels_unknown_is_a_data_error_naming_the_file():
    info = mne.create_info(["X1", "X2"], 200.0, "eeg")
    with pytest.raises(DataError, match=r"sub-07\.edf: none of the channel names \['X1', 'X2'\].*data.channel_map.*data.montage"):
        channel_positions(info, where="sub-07.edf")
