"""Toy models and per-method drivers shared by the adapter tests (one contract, every method)."""
from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from foundation.adapters import DopamineConfig, DopamineModel, LoraAdapterConfig, LoraAdapterModel


class ToyMlp(nn.Module):
    """timm-style MLP: mlp.fc1 -> GELU -> mlp.fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ToyNet(nn.Module):
    """[B, N, 8] tokens -> residual MLP block (suite naming ``blocks.0.mlp.fc1``) -> mean -> head [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"mlp": ToyMlp(8, 16)})])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.blocks[0]["mlp"](x)
        return self.head(x.mean(1))


class ToyConvNet(nn.Module):
    """Small convnet with 1x1 and depthwise convs: [B, 3, H, W] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_pw = nn.Conv2d(8, 16, 1)
        self.conv_dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv_pwl = nn.Conv2d(16, 8, 1)
        self.classifier = nn.Linear(8, 4)
        self.pretrained_cfg = {"classifier": "classifier"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_stem(x))
        x = self.conv_pwl(torch.relu(self.conv_dw(torch.relu(self.conv_pw(x)))))
        return self.classifier(x.mean((2, 3)))


class SuiteNet(nn.Module):
    """Two suite Blocks (``blocks.i.attn.qkv`` ... ``blocks.i.mlp.fc2``) + head: [B, N, 16] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        from foundation.layers.block import Block

        self.blocks = nn.ModuleList([Block(16, num_heads=2, mlp_ratio=2.0) for _ in range(2)])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def tiny_vit() -> nn.Module:
    return timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32, patch_size=8)


def make_model(kind: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A fresh model (fixed seed) and an input batch for it."""
    torch.manual_seed(seed)
    if kind == "toy":
        return ToyNet().eval(), torch.randn(4, 5, 8)
    if kind == "vit":
        return tiny_vit().eval(), torch.randn(2, 3, 32, 32)
    if kind == "suite":
        return SuiteNet().eval(), torch.randn(2, 5, 16)
    if kind == "conv":
        return ToyConvNet().eval(), torch.randn(2, 3, 12, 12)
    raise ValueError(kind)


@dataclass
class Method:
    """How the contract tester drives one adapter method."""

    name: str
    inject: Callable[[nn.Module], nn.Module]
    perturb: Callable[[nn.Module], None]
    save: Callable[[nn.Module, Path], None]
    load: Callable[[nn.Module, Path], nn.Module]
    disabled: Callable[[nn.Module], AbstractContextManager]
    marker: str


def _perturb_lora(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _perturb_dopamine(model: DopamineModel) -> None:
    gen = torch.Generator().manual_seed(1)
    model.set_step(model.config.warmup_steps + 5)
    with torch.no_grad():
        for _, layer in model.dopamine_layers():
            d = layer.out_features
            layer.dopamine_tau["default"].copy_(torch.randn(d, generator=gen) * 0.3)
            layer.dopamine_gamma["default"].copy_(1.0 + 0.5 * torch.rand(d, generator=gen))


def _method(cls: type, config, perturb: Callable[[nn.Module], None]) -> Method:
    """Every adapter drives the same way through the AdapterModel interface; only the perturbation differs."""
    return Method(cls.method, lambda m: cls.inject(m, config), perturb, lambda m, f: m.save(f),
                  lambda m, f: cls.load(m, f), lambda m: m.disable_adapter(), cls.marker)


def lora_method(config: LoraAdapterConfig) -> Method:
    return _method(LoraAdapterModel, config, _perturb_lora)


def dopamine_method(config: DopamineConfig) -> Method:
    return _method(DopamineModel, config, _perturb_dopamine)


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
