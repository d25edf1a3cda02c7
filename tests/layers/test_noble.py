"""NOBLE: CosNet branch formula and init, apply_noble, learning-rate groups."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from foundation.errors import ConfigError
from foundation.layers.noble import NobleLinear, apply_noble, branch_parameters, noble_param_groups


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.ModuleDict({"fc1": nn.Linear(16, 32), "fc2": nn.Linear(32, 16)}) for _ in range(2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = h + b["fc2"](torch.relu(b["fc1"](h)))
        return self.head(self.norm(h))


def test_forward_is_the_cosnet_formula() -> None:
    torch.manual_seed(0)
    layer = NobleLinear(6, 5, rank=4).double()
    for p in branch_parameters(layer):
        nn.init.normal_(p[1])
    x = torch.randn(3, 2, 6, dtype=torch.float64)
    h = torch.cos(layer.noble_w1 * (x @ layer.noble_down.weight.T) + layer.noble_p1)
    h = torch.cos(layer.noble_w2 * (h @ layer.noble_mid.weight.T + layer.noble_mid.bias) + layer.noble_p2)
    expected = x @ layer.weight.T + layer.bias + h @ layer.noble_up.weight.T
    torch.testing.assert_close(layer(x), expected)
    assert isinstance(layer, nn.Linear)


def test_branch_starts_near_zero_with_the_reference_init() -> None:
    torch.manual_seed(0)
    r = 32
    layer = NobleLinear(256, 256, rank=r)
    assert abs(layer.noble_up.weight.std().item() - 0.01 / math.sqrt(r)) < 0.1 * 0.01 / math.sqrt(r)
    assert abs(layer.noble_mid.weight.std().item() - 0.5 / math.sqrt(r)) < 0.15 * 0.5 / math.sqrt(r)
    for w in (layer.noble_w1, layer.noble_w2):
        assert w.min() >= 0.8 and w.max() <= 1.2
    x = torch.randn(64, 256)
    main = nn.functional.linear(x, layer.weight, layer.bias)
    # |branch| <= ||W_up row||_1 since |cos| <= 1; with std 0.01/sqrt(r) that is about 0.01 * sqrt(r) * 0.8
    assert layer.branch(x).abs().max() < 0.1 * main.abs().mean()


def test_apply_noble_keeps_weights_and_output() -> None:
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(4, 8)
    before = net(x).detach()
    fc1_weight = net.blocks[0]["fc1"].weight
    replaced = apply_noble(net, ["fc1", "fc2"], rank=4)
    assert replaced == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"]
    assert isinstance(net.blocks[1]["fc2"], NobleLinear) and not isinstance(net.head, NobleLinear)
    assert net.blocks[0]["fc1"].weight is fc1_weight  # the same Parameter, not a copy
    torch.testing.assert_close(net(x), before, atol=5e-2, rtol=0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, NobleLinear):
                m.noble_up.weight.zero_()
    torch.testing.assert_close(net(x), before)  # exactly the old model once the branch is silenced


def test_apply_noble_regex() -> None:
    net = _Net()
    assert apply_noble(net, r"blocks\.1\..*|head", rank=3) == ["blocks.1.fc1", "blocks.1.fc2", "head"]


def test_apply_noble_validates_before_mutating() -> None:
    net = _Net()
    with pytest.raises(ConfigError, match=r"targets \['fc3', 'proj'\] match no nn.Linear module of _Net; .*blocks.0.fc1"):
        apply_noble(net, ["fc3", "proj"])
    # head is 16 -> 3: rank 8 is too large for it; nothing may be replaced, not even the fc layers listed first
    with pytest.raises(ConfigError, match=r"module 'head'.*\[1, 3\] for a 16 -> 3 layer, got 8"):
        apply_noble(net, ["fc1", "head"], rank=8)
    assert not any(isinstance(m, NobleLinear) for m in net.modules())
    apply_noble(net, ["fc1"], rank=2)
    with pytest.raises(ConfigError, match=r"already a NobleLinear"):
        apply_noble(net, ["fc1"], rank=2)
    with pytest.raises(ConfigError, match=r"not a valid regular expression"):
        apply_noble(net, "fc(", rank=2)


def test_rank_larger_than_width() -> None:
    with pytest.raises(ConfigError, match=r"rank must be an integer in \[1, min\(in_features, out_features\)\] = \[1, 4\]"):
        NobleLinear(4, 16, rank=5)


def _grads(net: nn.Module) -> None:
    net.zero_grad()
    net(torch.randn(16, 8)).square().mean().backward()


def test_param_groups_sgd_step_scales_the_branch() -> None:
    torch.manual_seed(0)
    net = _Net()
    apply_noble(net, ["fc1", "fc2"], rank=4)
    groups = noble_param_groups(net, base_lr=0.1, weight_decay=0.0, branch_lr_mult=7.0)
    assert {g["name"] for g in groups} == {"base", "base_no_decay", "branch", "branch_no_decay"}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    _grads(net)
    opt = torch.optim.SGD(groups, lr=0.1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    for n, p in net.named_parameters():
        mult = 7.0 if ".noble_" in n else 1.0
        torch.testing.assert_close(p.detach() - before[n], -0.1 * mult * p.grad)


def test_param_groups_reach_adamw_and_survive_lambdalr() -> None:
    torch.manual_seed(0)
    net = _Net()
    apply_noble(net, ["fc1", "fc2"], rank=4)
    groups = noble_param_groups(net, base_lr=1e-3, weight_decay=0.05, branch_lr_mult=10.0)
    opt = torch.optim.AdamW(groups)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["branch"] == pytest.approx(1e-2) and lrs["base"] == pytest.approx(1e-3)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["base_no_decay"] == 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    # one AdamW step without decay moves every entry by about lr (the first step is lr * sign(grad))
    for g in opt.param_groups:
        g["weight_decay"] = 0.0
    _grads(net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    sched.step()
    step = {n: (p.detach() - before[n]).abs() for n, p in net.named_parameters()}
    base = torch.cat([s.flatten() for n, s in step.items() if ".noble_" not in n and net.get_parameter(n).grad.abs().min() > 1e-6])
    branch = torch.cat([s.flatten() for n, s in step.items() if ".noble_" in n])
    assert branch.median() / base.median() == pytest.approx(10.0, rel=0.05)
    after = {g["name"]: g["lr"] for g in opt.param_groups}
    assert after["branch"] / after["base"] == pytest.approx(10.0)  # the scheduler keeps the ratio
    assert after["base"] == pytest.approx(5e-4)
    assert {g["name"]: g["lr_scale"] for g in opt.param_groups}["branch"] == 10.0


def test_bad_param_group_arguments() -> None:
    with pytest.raises(ConfigError, match=r"base_lr and branch_lr_mult must be > 0"):
        noble_param_groups(_Net(), base_lr=1e-3, branch_lr_mult=0.0)


def test_gradcheck() -> None:
    torch.manual_seed(0)
    layer = NobleLinear(5, 4, rank=3).double()
    for _, p in branch_parameters(layer):
        nn.init.normal_(p)  # a branch large enough to matter
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    names = [n for n, _ in branch_parameters(layer)]
    params = tuple(layer.get_parameter(n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (x.detach(),)), params
    )
