"""Task sampler: closed-form probabilities and the frequencies a planner actually draws."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError, DataError
from foundation.modalities.ultrasound.sampler import BatchPlanner, task_probabilities

SIZES = {"a": 10, "b": 40, "c": 160}


@pytest.mark.parametrize("mode,tau,expected", [
    ("uniform", 1.0, [1 / 3] * 3),
    ("proportional", 1.0, [10 / 210, 40 / 210, 160 / 210]),
    ("temperature", 2.0, [10**0.5 / (10**0.5 + 40**0.5 + 160**0.5), 40**0.5 / (10**0.5 + 40**0.5 + 160**0.5),
                          160**0.5 / (10**0.5 + 40**0.5 + 160**0.5)]),
])
def test_probabilities(mode, tau, expected):
    got = task_probabilities(SIZES, mode, tau)
    assert list(got.values()) == pytest.approx(expected)


def test_temperature_one_is_proportional():
    assert task_probabilities(SIZES, "temperature", 1.0) == pytest.approx(task_probabilities(SIZES, "proportional"))


@pytest.mark.parametrize("mixed", [False, True])
def test_planner_frequencies(mixed):
    pools = {t: list(range(sum(list(SIZES.values())[:i]), sum(list(SIZES.values())[:i + 1])))
             for i, t in enumerate(SIZES)}
    planner = BatchPlanner(pools, 4, "proportional", mixed=mixed)
    gen = torch.Generator().manual_seed(0)
    counts = {t: 0 for t in SIZES}
    for _ in range(2000):
        plan = planner.plan(gen)
        tasks = {t for t, pool in pools.items() for j in plan if j in pool}
        if not mixed:
            assert len(tasks) == 1
        for j in plan:
            counts[next(t for t, pool in pools.items() if j in pool)] += 1
    freq = torch.tensor(list(counts.values()), dtype=torch.float64) / 8000
    assert torch.allclose(freq, torch.tensor(list(task_probabilities(SIZES, "proportional").values()),
                                             dtype=torch.float64), atol=0.03)
    assert len(planner) == -(-210 // 4)


def test_errors():
    with pytest.raises(ConfigError, match="did you mean 'uniform'"):
        task_probabilities(SIZES, "unifrom")
    with pytest.raises(DataError, match="task 'z' has no training images"):
        task_probabilities({"z": 0}, "uniform")
