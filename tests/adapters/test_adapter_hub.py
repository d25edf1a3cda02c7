"""Adapters through the Hub: push a saved adapter folder to the loopback Hub, download it, load, same outputs."""
from __future__ import annotations

import pytest
import torch

from foundation.adapters import (
    DopamineConfig,
    LoraAdapterConfig,
    download_adapter,
    load_adapter,
    push_adapter,
)
from foundation.errors import CheckpointError
from tests.adapters._helpers import clone, dopamine_method, lora_method, make_model


@pytest.mark.parametrize("factory,config", [
    (lora_method, LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1", "mlp.fc2"), r=2)),
    (dopamine_method, DopamineConfig(target_modules=("mlp.fc1",), skip_modules=("mlp.fc2",))),
], ids=["lora", "dopamine"])
def test_push_download_load(factory, config, hub_endpoint, tmp_path):
    base, x = make_model("toy")
    pristine = clone(base)
    method = factory(config)
    wrapped = method.inject(base)
    method.perturb(wrapped)
    wrapped.eval()
    with torch.no_grad():
        expected = wrapped(x)
    method.save(wrapped, tmp_path / "adapter")
    sha = push_adapter(tmp_path / "adapter", f"user/toy-{method.name}", commit_message="adapter test")
    assert isinstance(sha, str) and sha
    folder = download_adapter(f"user/toy-{method.name}", cache_dir=hub_endpoint.fresh_cache())
    assert folder != tmp_path / "adapter"
    loaded = load_adapter(pristine, folder)
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_push_refuses_a_folder_without_adapter(hub_endpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json not found"):
        push_adapter(tmp_path / "empty", "user/nothing")
    assert not any("/commit/" in str(r) for r in hub_endpoint.server.requests)
