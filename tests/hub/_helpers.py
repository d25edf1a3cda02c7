"""Small models for the Hub tests: a Linear + LayerNorm net with a tuple field and optional tied weights."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from foundation.hub.mixin import HubMixin


@dataclass
class ToyConfig:
    """Config of :class:`ToyNet`; ``hidden`` is a tuple so config.json must bring a tuple back."""

    in_features: int = 6
    hidden: tuple[int, ...] = (8, 5)
    eps: float = 1e-5
    tie: bool = False


class ToyNet(nn.Module, HubMixin, tags=["hub-test"]):
    """[B, in_features] -> [B, in_features] through Linear layers, LayerNorm and two square mixers."""

    model_name = "hub-toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        dims = (config.in_features, *config.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norm = nn.LayerNorm(dims[-1], eps=config.eps)
        self.mix_a = nn.Linear(dims[-1], dims[-1])
        self.mix_b = nn.Linear(dims[-1], dims[-1])
        if config.tie:
            self.mix_b.weight = self.mix_a.weight  # tied: one tensor under two state-dict names
        self.head = nn.Linear(dims[-1], config.in_features)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_features] -> [B, in_features]."""
        for layer in self.layers:
            x = torch.tanh(layer(x))
        x = self.norm(x)
        return self.head(self.mix_b(torch.relu(self.mix_a(x)))) * self.scale


class OtherNet(ToyNet):
    """Same layers as ToyNet under another registry name: its loader must refuse ToyNet folders."""

    model_name = "hub-other"


def randomized(config: ToyConfig | None = None, seed: int = 0) -> ToyNet:
    """A ToyNet whose every parameter and buffer is random (LayerNorm affine and the buffer included)."""
    torch.manual_seed(seed)
    model = ToyNet(config or ToyConfig())
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))
    return model.eval()


def inputs(config: ToyConfig | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(4, (config or ToyConfig()).in_features, generator=generator)


def folder_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
