"""DopamineConfig checks and the two schedules (pure functions of the step)."""
from __future__ import annotations

import math

import pytest

from foundation.adapters.dopamine import DopamineConfig, gate_mix_at, temperature_at
from foundation.errors import ConfigError


def test_every_field_has_a_default_and_help():
    from dataclasses import MISSING, fields

    for f in fields(DopamineConfig):
        assert f.default is not MISSING or f.default_factory is not MISSING, f.name
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("schedule,formula", [
    ("cosine", lambda p: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))),
    ("exponential", lambda p: 1.0 * 0.05 ** p),
    ("linear", lambda p: 1.0 - 0.95 * p),
])
def test_temperature_schedules_follow_their_closed_form(schedule, formula):
    cfg = DopamineConfig(schedule=schedule, temperature_start=1.0, temperature_end=0.05, anneal_steps=40)
    for step in (0, 1, 10, 20, 39, 40, 41, 1000):
        assert temperature_at(step, cfg) == pytest.approx(formula(min(step / 40, 1.0)), rel=1e-12)
    temps = [temperature_at(s, cfg) for s in range(41)]
    assert temps[0] == 1.0 and temps[-1] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(temps, temps[1:]))  # monotone anneal


def test_constant_schedule_and_gate_mix():
    cfg = DopamineConfig(schedule="constant", temperature_start=0.3, temperature_end=0.3, warmup_steps=4)
    assert {temperature_at(s, cfg) for s in (0, 7, 10_000)} == {0.3}
    assert [gate_mix_at(s, cfg) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert gate_mix_at(0, DopamineConfig(warmup_steps=0)) == 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(schedule="cosin"), r"schedule: unknown value 'cosin'; did you mean 'cosine'"),
    (dict(temperature_start=0.1, temperature_end=0.5), r"temperature_end=0.5 exceeds temperature_start=0.1"),
    (dict(temperature_end=0.0), r"temperature_start=1.0, temperature_end=0.0: both must be > 0"),
    (dict(schedule="constant"), r"schedule='constant' needs temperature_end == temperature_start"),
    (dict(gamma_init=0.0), r"gamma_init: expected > 0"),
    (dict(tau_init=float("nan")), r"tau_init: expected a finite number"),
    (dict(anneal_steps=0), r"anneal_steps: expected >= 1"),
    (dict(warmup_steps=-1), r"warmup_steps: expected an integer >= 0"),
    (dict(target_modules=()), r"target_modules: empty"),
])
def test_bad_values_name_the_fields(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DopamineConfig(**kwargs)


def test_lists_become_tuples_for_plain_data():
    cfg = DopamineConfig(target_modules=["fc1"], skip_modules=["fc2"], exclude_modules=["x"])
    assert cfg.target_modules == ("fc1",) and cfg.skip_modules == ("fc2",) and cfg.exclude_modules == ("x",)
