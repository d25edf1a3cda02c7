"""``foundation.load``: any folder the suite saved, back as its class; clear errors; ``import foundation`` stays cheap."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import foundation
from foundation.errors import CheckpointError
from tests.fixtures.toy_mae import ToyMAE

ROOT = Path(__file__).resolve().parents[1]


def test_a_pretrained_encoder_loads_as_its_own_class(tmp_path):
    torch.manual_seed(0)
    model = ToyMAE(ToyMAE.config_class()).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = foundation.load(tmp_path / "m")
    assert type(loaded) is ToyMAE and not loaded.training
    x, keep = torch.randn(2, 16, 8), torch.arange(0, 16, 2).expand(2, -1)
    torch.testing.assert_close(loaded(x, keep), model(x, keep), rtol=0, atol=0)


def test_errors_name_the_source(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        foundation.load("./no-such-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        foundation.load(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_name": "no-such-model"}))
    with pytest.raises(CheckpointError, match="no-such-model"):
        foundation.load(tmp_path / "odd")


def test_a_dopamine_folder_says_what_it_is(tmp_path):
    from foundation.adapters import DopamineConfig, DopamineModel
    from tests.adapters._helpers import ToyNet

    DopamineModel(ToyNet(), DopamineConfig(target_modules=("mlp.fc1",), skip_modules=())).save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["adapter_type"] == "foundation-dopamine" and "not a peft adapter" in cfg["note"]


def test_import_foundation_stays_cheap():
    code = "import sys, foundation; print('torch' in sys.modules, callable(foundation.load), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr
