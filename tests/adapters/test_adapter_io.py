"""Adapter folders: peft-compatible LoRA files, ZeRO-3 gather wiring, atomic writes, method table, dispatch."""
from __future__ import annotations

import json
import sys
import types
from contextlib import contextmanager

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from foundation.adapters import (
    DopamineConfig,
    DopamineModel,
    LoraAdapterConfig,
    LoraAdapterModel,
    adapter_names,
    get_adapter,
    load_adapter,
    register_adapter,
)
from foundation.adapters.state import gathered_state_dict
from foundation.atomic import staged_folder
from foundation.hub.adapter_folder import read_adapter_config
from foundation.errors import CheckpointError, ConfigError
from tests.adapters._helpers import _perturb_lora, clone, make_model


def test_lora_files_match_peft_own_save_and_load_back_with_peft(tmp_path):
    base, x = make_model("toy")
    pristine = clone(base)
    wrapped = LoraAdapterModel.inject(base, LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1",), r=3))
    _perturb_lora(wrapped)
    wrapped.save(tmp_path / "ours")
    wrapped.model.save_pretrained(str(tmp_path / "peft"))  # peft's own writer (on the PeftModel), the reference
    ours, ref = load_file(str(tmp_path / "ours/adapter_model.safetensors")), load_file(
        str(tmp_path / "peft/adapter_model.safetensors"))
    assert sorted(ours) == sorted(ref)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=0)
    assert json.loads((tmp_path / "ours/adapter_config.json").read_text())["peft_type"] == "LORA"
    wrapped.eval()
    reread = PeftModel.from_pretrained(clone(pristine), str(tmp_path / "ours")).eval()
    ours_from_peft = LoraAdapterModel.load(pristine, tmp_path / "peft").eval()  # and we read peft's own folder
    with torch.no_grad():
        torch.testing.assert_close(reread(x), wrapped(x), rtol=0, atol=0)
        torch.testing.assert_close(ours_from_peft(x), wrapped(x), rtol=0, atol=0)


def test_a_config_of_another_method_is_refused_before_mutation():
    base, _ = make_model("toy")
    with pytest.raises(ConfigError, match="LoraAdapterModel: expected a LoraAdapterConfig, got DopamineConfig"):
        LoraAdapterModel(base, DopamineConfig(target_modules=("mlp.fc1",)))
    assert not any("lora_" in n for n, _ in base.named_parameters())


def test_gather_uses_deepspeed_for_zero_partitioned_parameters(monkeypatch):
    model, _ = make_model("toy")
    calls = []

    @contextmanager
    def gathered(params, modifier_rank=None):
        calls.append(([id(p) for p in params], modifier_rank))
        yield

    fake = types.SimpleNamespace(zero=types.SimpleNamespace(GatheredParameters=gathered))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    keep = lambda n: "fc1" in n  # noqa: E731
    assert calls == [] and set(gathered_state_dict(model, keep)) == {"blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias"}
    assert calls == []  # nothing partitioned: no collective
    weight = model.blocks[0]["mlp"].fc1.weight
    weight.ds_id, weight.ds_status = 7, "NOT_AVAILABLE"
    state = gathered_state_dict(model, keep)
    assert calls == [([id(weight)], None)]  # only the partitioned tensor, gathered on every rank
    assert state["blocks.0.mlp.fc1.weight"].data_ptr() != weight.data_ptr()  # a copy, safe after the gather


def test_staged_folder_keeps_the_old_adapter_on_failure(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "adapter_model.safetensors").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"):
        with staged_folder(target) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"half")
            raise RuntimeError("crash")
    assert (target / "adapter_model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left


def test_read_adapter_config_errors(tmp_path):
    with pytest.raises(CheckpointError, match="adapter_config.json not found"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(CheckpointError, match="no 'peft_type' field"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors not found"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"key peft_type: unknown adapter method 'IA3'; valid: dopamine, lora\b"):
        load_adapter(make_model("toy")[0], tmp_path)


def test_load_adapter_dispatches_on_peft_type(tmp_path):
    base, x = make_model("toy")
    pristine = clone(base)
    dop = DopamineModel(base, DopamineConfig(target_modules=("mlp.fc1",), tau_init=0.0, warmup_steps=0))
    dop.save(tmp_path / "d")
    loaded = load_adapter(pristine, tmp_path / "d")
    assert isinstance(loaded, DopamineModel)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), dop.eval()(x), rtol=0, atol=0)


def test_lora_load_is_strict(tmp_path):
    base, _ = make_model("toy")
    wrapped = LoraAdapterModel.inject(base, LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1",), r=2))
    wrapped.save(tmp_path / "a")
    state = load_file(str(tmp_path / "a/adapter_model.safetensors"))
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if "lora_B" not in k}, str(tmp_path / "a/adapter_model.safetensors"))
    fresh, _ = make_model("toy")
    with pytest.raises(CheckpointError, match=r"missing \['base_model.model.blocks.0.mlp.fc1.lora_B"):
        LoraAdapterModel.load(fresh, tmp_path / "a")
    assert not any("lora_" in n for n, _ in fresh.named_parameters())  # no LoRA layer left behind


def test_method_table_is_write_once():
    class Again(LoraAdapterModel):
        peft_type = "LORA2"

    class SameType(DopamineModel):
        method = "dopamine-2"

    class Unnamed(DopamineModel):
        method = ""

    with pytest.raises(ValueError, match="'lora' is already registered"):
        register_adapter(Again)
    with pytest.raises(ValueError, match="peft_type 'DOPAMINE' is already used by adapter method 'dopamine'"):
        register_adapter(SameType)
    with pytest.raises(ValueError, match="must set the class attributes method, peft_type and marker"):
        register_adapter(Unnamed)
    with pytest.raises(ValueError, match="is not a subclass of AdapterModel"):
        register_adapter(torch.nn.Linear)
    with pytest.raises(ConfigError, match="unknown adapter method 'dopamin'; did you mean 'dopamine'"):
        get_adapter("dopamin")
    assert get_adapter("DOPAMINE") is DopamineModel and get_adapter("lora") is LoraAdapterModel
    assert {"lora", "dopamine"} <= set(adapter_names())


@pytest.mark.parametrize("kwargs,match", [
    (dict(preset="atention"), r"unknown preset 'atention'; did you mean 'attention'"),
    (dict(preset="custom"), r"preset='custom' needs target_modules"),
    (dict(target_modules=("fc1",)), r"preset='attention-mlp' and target_modules=\('fc1',\) are both set"),
    (dict(r=0), r"r: expected an integer >= 1, got 0"),
    (dict(alpha=0), r"alpha: expected > 0"),
    (dict(dropout=1.0), r"dropout: expected a value in \[0, 1\)"),
])
def test_lora_config_checks(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LoraAdapterConfig(**kwargs)


def test_only_rank_zero_writes(monkeypatch, tmp_path):
    base, _ = make_model("toy")
    wrapped = LoraAdapterModel.inject(base, LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1",), r=2))
    dop = DopamineModel(make_model("toy")[0], DopamineConfig(target_modules=("mlp.fc1",)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    wrapped.save(tmp_path / "lora")
    dop.save(tmp_path / "dop")
    assert not (tmp_path / "lora").exists() and not (tmp_path / "dop").exists()
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    wrapped.save(tmp_path / "lora")
    dop.save(tmp_path / "dop")
    assert read_adapter_config(tmp_path / "lora")["peft_type"] == "LORA"
    assert read_adapter_config(tmp_path / "dop")["peft_type"] == "DOPAMINE"
