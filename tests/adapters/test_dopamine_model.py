"""DopamineModel beyond the contract: LoRA + Dopamine together, strict loading, attribution on a known signal."""
from __future__ import annotations

import csv

import matplotlib.image
import pytest
import torch
from torch import nn

from foundation.adapters import DopamineConfig, DopamineModel, LoraAdapterConfig, LoraAdapterModel
from foundation.adapters.dopamine import neuron_attribution, write_attribution
from foundation.errors import CheckpointError, ConfigError, DataError
from tests.adapters._helpers import ToyNet, clone, make_model


def test_lora_plus_dopamine_train_and_round_trip(tmp_path):
    base, x = make_model("toy")
    pristine = clone(base)
    peft_model = LoraAdapterModel.inject(base, LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1", "mlp.fc2"),
                                                                 r=2))
    with pytest.raises(ConfigError, match=r"skip_modules: module 'model.base_model.model.blocks.0.mlp.fc2' .* is a "
                       r"peft\.tuners\.lora.*Linear; expected one of torch\.nn\.modules\.linear\.Linear"):
        DopamineModel(peft_model, DopamineConfig(target_modules=("mlp.fc1",), skip_modules=("mlp.fc2",)))
    both = DopamineModel(peft_model, DopamineConfig(target_modules=("mlp.fc1",), skip_modules=(), warmup_steps=1))
    trainable = {n: p.detach().clone() for n, p in both.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and any("dopamine_tau" in n for n in trainable)
    assert all("lora_" in n or "dopamine_" in n for n in trainable)
    opt = torch.optim.Adam([p for p in both.parameters() if p.requires_grad], lr=0.05)
    target = torch.randn(4, 3)
    both.train()
    for _ in range(5):
        loss = (both(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        both.on_step_end(both.step + 1)
    moved = {n for n, p in both.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])}
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)
    assert any("dopamine_tau" in n for n in moved) and any("dopamine_gamma" in n for n in moved)
    both.eval()
    with torch.no_grad():
        expected = both(x)
    peft_model.save(tmp_path / "lora")
    both.save(tmp_path / "dopamine")
    reloaded = DopamineModel.load(LoraAdapterModel.load(pristine, tmp_path / "lora"), tmp_path / "dopamine")
    assert reloaded.step == 5
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)


class _Wide(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"mlp": nn.Module()})])
        self.blocks[0]["mlp"].fc1 = nn.Linear(8, hidden)
        self.blocks[0]["mlp"].fc2 = nn.Linear(hidden, 8)
        self.head = nn.Linear(8, 3)


def test_load_is_strict_and_leaves_no_wrapper(tmp_path):
    base, _ = make_model("toy")
    DopamineModel(base, DopamineConfig(target_modules=("mlp.fc1",))).save(tmp_path / "a")
    other = _Wide(hidden=32)
    with pytest.raises(CheckpointError, match=r"does not match the model.*shape mismatch \['blocks.0.mlp.fc1"):
        DopamineModel.load(other, tmp_path / "a")
    assert type(other.blocks[0]["mlp"].fc1) is nn.Linear and type(other.blocks[0]["mlp"].fc2) is nn.Linear
    with pytest.raises(CheckpointError, match=r"peft_type 'DOPAMINE'; expected 'LORA'"):
        LoraAdapterModel.load(ToyNet(), tmp_path / "a")
    with pytest.raises(ConfigError, match="already holds Dopamine layers"):
        wrapped = DopamineModel(ToyNet(), DopamineConfig(target_modules=("mlp.fc1",)))
        DopamineModel(wrapped.model, DopamineConfig(target_modules=("mlp.fc2",)))


class _OneHotNet(nn.Module):
    """[B, 4] one-hot class codes -> fc1 = identity -> fc2: unit j of fc1 fires exactly on class j."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(4))
            self.fc1.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_attribution_recovers_a_known_firing_pattern(tmp_path):
    model = DopamineModel(_OneHotNet(), DopamineConfig(target_modules=("fc1",), skip_modules=("fc2",), tau_init=0.5,
                                                       warmup_steps=0))
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 0, 1, 1, 2])
    loader = [(torch.eye(4)[labels[i:i + 3]], labels[i:i + 3]) for i in range(0, 10, 3)]
    rates = neuron_attribution(model, loader, num_classes=5)  # class 4 has no sample
    torch.testing.assert_close(rates["fc1"][:4], torch.eye(4))
    assert torch.isnan(rates["fc1"][4]).all()
    # the skip layer did real conditional work: one active column per sample row out of 4
    model.eval()
    model.reset_mac_counts()
    with torch.no_grad():
        model(torch.eye(4)[labels[:1]])
    assert model.mac_counts()["fc2"] == (1 * 1 * 2, 1 * 4 * 2)
    paths = write_attribution({"fc1": rates["fc1"][:4]}, tmp_path / "attr")
    rows = list(csv.reader(open(paths["csv"])))
    assert rows[0] == ["layer", "unit", "class_0", "class_1", "class_2", "class_3"] and len(rows) == 5
    assert rows[3][2:] == ["0.0000", "0.0000", "1.0000", "0.0000"]
    assert "| 2 | 25.0% | 2 (1.00)" in paths["markdown"].read_text()
    image = matplotlib.image.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 50
    with pytest.raises(DataError, match=r"label 7 outside \[0, 5\)"):
        neuron_attribution(model, [(torch.eye(4)[:1], torch.tensor([7]))], num_classes=5)
