import pytest
from torch import nn

from foundation.config import TrainConfig
from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer, param_groups
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
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["branch"] == pytest.approx(1e-2 * mult) and lrs["decay"] == pytest.approx(1e-3 * mult)
        opt.step()
        sched.step()
    state = sched.state_dict()
    fresh = WarmupCosineScheduler(build_optimizer(_Branchy(), train), train)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx(sched.get_last_lr())
