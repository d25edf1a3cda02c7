import copy

import pytest
import torch
from torch import nn

from foundation.config import TrainConfig
from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer, merge_groups, param_groups
from foundation.pretrain.schedule import warmup_cosine


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.branch = _Branch()


class _Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Linear(4, 4)

    def param_groups(self, lr, weight_decay):
        return [{"params": list(self.parameters()), "lr_scale": 10.0, "weight_decay": 0.0, "name": "branch"}]


def test_groups_split_decay_and_honour_lr_scale():
    train = TrainConfig(lr=1e-3, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(_Branchy(), train)}
    assert groups["branch"]["lr"] == pytest.approx(1e-2)
    assert [p.ndim for p in groups["decay"]["params"]] == [2]
    assert groups["no_decay"]["weight_decay"] == 0.0


def test_scheduler_scales_every_group_and_keeps_ratios():
    train = TrainConfig(lr=1e-3, steps=20, warmup_steps=5, min_lr_ratio=0.1)
    opt = build_optimizer(_Branchy(), train)
    sched = WarmupCosineScheduler(opt, train)
    for step in range(20):
        mult = warmup_cosine(step, 20, 5, 0.1)
        lrs = {n: g["lr"] for g in opt.param_groups for n in g["members"]}
        assert lrs["branch"] == pytest.approx(1e-2 * mult) and lrs["decay"] == pytest.approx(1e-3 * mult)
        opt.step()
        sched.step()
    state = sched.state_dict()
    fresh = WarmupCosineScheduler(build_optimizer(_Branchy(), train), train)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx(sched.get_last_lr())


def _tiny_train_module(recipe_name: str):
    from foundation.config import load_recipe
    from foundation.pretrain.components import TrainModule, build_model, build_objective

    recipe = load_recipe(recipe_name)
    torch.manual_seed(0)
    return TrainModule(build_model(recipe), build_objective(recipe)), recipe.train


@pytest.mark.parametrize("recipe_name", ["ultrasound-mtl-tiny", "deeperbrain-tiny"])
def test_fused_merged_adamw_matches_the_single_tensor_path_over_unmerged_groups(recipe_name):
    """The optimizer before this change: AdamW's single-tensor path over the unmerged groups. Three steps
    with random gradients (the same on both sides) leave every parameter within float tolerance."""
    module, train = _tiny_train_module(recipe_name)
    reference = copy.deepcopy(module)
    opt = build_optimizer(module, train)
    unmerged = param_groups(reference, train)
    ref_opt = torch.optim.AdamW(unmerged, lr=train.lr, betas=train.betas, eps=train.eps, foreach=False)
    assert all(g.get("fused") for g in opt.param_groups)
    assert len(opt.param_groups) <= len(unmerged)
    if recipe_name.startswith("ultrasound"):
        assert len(unmerged) > 50 and len(opt.param_groups) <= 6  # a pair per head, merged by lr and decay
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(module.parameters(), reference.parameters()):
            q.grad = torch.randn(q.shape, generator=g)
            p.grad = q.grad.clone()
        opt.step()
        ref_opt.step()
    for (name, p), q in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_merge_keeps_every_parameter_once_with_its_hyper_parameters():
    module, train = _tiny_train_module("ultrasound-mtl-tiny")
    unmerged = param_groups(module, train)
    merged = merge_groups(unmerged)
    where = {id(p): (g["lr"], g["weight_decay"]) for g in unmerged for p in g["params"]}
    got = {id(p): (g["lr"], g["weight_decay"]) for g in merged for p in g["params"]}
    assert got == where and sum(len(g["params"]) for g in merged) == len(where)
    assert sorted(n for g in merged for n in g["members"]) == sorted(g["name"] for g in unmerged)
    keys = [(g["lr_scale"], g["weight_decay"]) for g in merged]
    assert len(set(keys)) == len(keys)
