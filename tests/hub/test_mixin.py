"""Local save_pretrained / from_pretrained: exact round trip, strict keys, atomic writes, model card."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import foundation.hub.mixin
from foundation.errors import CheckpointError, ConfigError
from foundation.hub import CONFIG_NAME, WEIGHTS_NAME
from tests.hub._helpers import OtherNet, ToyConfig, ToyNet, folder_digest, inputs, randomized


def test_round_trip_reproduces_outputs_and_config(tmp_path):
    config = ToyConfig(hidden=(7, 3), eps=1e-3)
    model = randomized(config)
    model.save_pretrained(tmp_path / "export")
    loaded = ToyNet.from_pretrained(tmp_path / "export")
    assert loaded.config == config and isinstance(loaded.config.hidden, tuple)
    assert not loaded.training
    torch.testing.assert_close(loaded(inputs(config)), model(inputs(config)), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    written = json.loads((tmp_path / "export" / CONFIG_NAME).read_text())
    assert written["model_name"] == "hub-toy" and written["hidden"] == [7, 3]


def test_tied_weights_stored_once_like_safetensors_save_model(tmp_path):
    model = randomized(ToyConfig(tie=True))
    model.save_pretrained(tmp_path / "tied")
    safetensors.torch.save_model(model, str(tmp_path / "reference.safetensors"))  # the reference semantics
    with safe_open(str(tmp_path / "tied" / WEIGHTS_NAME), "pt") as ours, \
            safe_open(str(tmp_path / "reference.safetensors"), "pt") as ref:
        assert sorted(ours.keys()) == sorted(ref.keys())
        assert len(list(ours.keys())) == len(model.state_dict()) - 1
    loaded = ToyNet.from_pretrained(tmp_path / "tied")
    assert loaded.mix_b.weight is loaded.mix_a.weight
    torch.testing.assert_close(loaded(inputs()), model(inputs()), rtol=0, atol=0)


def _rewrite(folder, edit):
    tensors = safetensors.torch.load_file(str(folder / WEIGHTS_NAME))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(folder / WEIGHTS_NAME))


def test_missing_key_fails_naming_it(tmp_path):
    randomized().save_pretrained(tmp_path / "m")
    _rewrite(tmp_path / "m", lambda t: t.pop("norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): norm\.weight") as info:
        ToyNet.from_pretrained(tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value)


def test_extra_key_fails_naming_it(tmp_path):
    randomized().save_pretrained(tmp_path / "e")
    _rewrite(tmp_path / "e", lambda t: t.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): extra\.weight"):
        ToyNet.from_pretrained(tmp_path / "e")


def test_shape_and_dtype_mismatch_fail_naming_both_sides(tmp_path):
    randomized().save_pretrained(tmp_path / "s")
    _rewrite(tmp_path / "s", lambda t: t.update({"norm.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"norm\.weight: checkpoint \[3\] vs model \[5\]"):
        ToyNet.from_pretrained(tmp_path / "s")
    model64 = randomized().to(torch.float64)
    model64.save_pretrained(tmp_path / "d")
    with pytest.raises(CheckpointError, match=r"checkpoint dtype F64 vs model torch\.float32"):
        ToyNet.from_pretrained(tmp_path / "d")
    loaded = ToyNet.from_pretrained(tmp_path / "d", dtype=torch.float64)
    x = inputs().double()
    torch.testing.assert_close(loaded(x), model64(x), rtol=0, atol=0)


def test_folder_of_another_model_is_refused(tmp_path):
    randomized().save_pretrained(tmp_path / "toy")
    with pytest.raises(CheckpointError, match=r"holds a 'hub-toy' model, not 'hub-other'"):
        OtherNet.from_pretrained(tmp_path / "toy")


def test_bad_config_json_names_the_key(tmp_path):
    randomized().save_pretrained(tmp_path / "c")
    data = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())
    data["hiden"] = data.pop("hidden")
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json\.hiden: unknown key; did you mean 'hidden'"):
        ToyNet.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps({"in_features": 6}))
    with pytest.raises(CheckpointError, match="has no 'model_name' key"):
        ToyNet.from_pretrained(tmp_path / "c")


def test_atomic_save_keeps_old_export_when_writing_fails(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    randomized(seed=1).save_pretrained(folder)
    before = folder_digest(folder)

    def broken_writer(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a partial file in the temporary folder, then the failure
            f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(foundation.hub.mixin, "save_file", broken_writer)
    with pytest.raises(OSError, match="No space left"):
        randomized(seed=2).save_pretrained(folder)
    assert folder_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left behind
    monkeypatch.undo()
    model = randomized(seed=2)
    model.save_pretrained(folder)  # replacing works once the writer is healthy
    torch.testing.assert_close(ToyNet.from_pretrained(folder)(inputs()), model(inputs()), rtol=0, atol=0)


def test_save_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "optimizer.pt").write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match=r"holds other files \(optimizer\.pt\)"):
        randomized().save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "optimizer.pt").read_bytes() == b"keep me"


def test_local_folder_argument_errors(tmp_path):
    randomized().save_pretrained(tmp_path / "x")
    with pytest.raises(ConfigError, match="applies to Hub repos only"):
        ToyNet.from_pretrained(tmp_path / "x", revision="main")
    with pytest.raises(CheckpointError, match="no such folder, and not a Hub repo id"):
        ToyNet.from_pretrained(str(tmp_path / "missing" / "deep" / "path"))
    (tmp_path / "x" / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        ToyNet.from_pretrained(tmp_path / "x")


class _ViewNet(ToyNet):
    """A buffer that is a view into rows of a parameter: shared memory that is not a plain tie."""

    model_name = "hub-view"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.register_buffer("head_rows", self.head.weight.detach()[1:3])


def test_overlapping_views_are_cloned_not_refused(tmp_path):
    torch.manual_seed(0)
    model = _ViewNet(ToyConfig())
    with pytest.raises(RuntimeError, match="share memory"):  # what plain safetensors does with it
        safetensors.torch.save_file(model.state_dict(), str(tmp_path / "plain.safetensors"))
    model.save_pretrained(tmp_path / "view")
    loaded = _ViewNet.from_pretrained(tmp_path / "view")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_model_class_contract_is_checked():
    with pytest.raises(TypeError, match="model_name must be a lower-case, hyphen-joined name"):
        type("Bad", (ToyNet,), {"model_name": "Bad Name"})
    with pytest.raises(TypeError, match=r"fields \['model_name'\] clash"):
        from dataclasses import make_dataclass
        type("Clash", (ToyNet,), {"config_class": make_dataclass("C", [("model_name", str, "x")])})


def test_a_config_json_the_model_cannot_be_built_from_is_a_checkpoint_error(tmp_path):
    folder = randomized(seed=1).save_pretrained(tmp_path / "export")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden"] = [-3]  # a negative width: nn.Linear refuses it
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json describes a 'hub-toy' model that cannot be built .*re-export"):
        ToyNet.from_pretrained(folder)


def test_preprocessing_goes_into_config_json_and_the_card_and_loads_back(tmp_path):
    from foundation.hub import ModelCardInfo

    config = ToyConfig()
    model = randomized(config)
    pre = {"modality": "eeg", "sfreq_hz": 200.0, "band_pass_hz": [0.1, 75.0]}
    folder = model.save_pretrained(tmp_path / "m", card=ModelCardInfo(preprocessing=pre))
    assert json.loads((folder / CONFIG_NAME).read_text())["preprocessing"] == pre
    card = (folder / "README.md").read_text()
    assert "## Preprocessing the model expects" in card and "| sfreq_hz | 200.0 |" in card
    again = ToyNet.from_pretrained(folder)  # the note is not a config field, and does not break loading
    x = inputs(config)
    assert torch.equal(again(x), model.eval()(x))
