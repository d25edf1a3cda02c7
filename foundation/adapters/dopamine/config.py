"""Configuration and schedules of the Dopamine adapter.

Dopamine, the suite's own gate adapter (no published paper or official code to cite): the
base model stays frozen; every hidden unit j of the chosen layers gets a threshold tau_j
and a gain gamma_j, and the unit's output h_j becomes

    training:  h'_j = gamma_j * sigmoid((h_j - tau_j) / T) * h_j
    inference: h'_j = gamma_j * 1[h_j > tau_j] * h_j        (hard gate)

so that specialising to a sub-task amounts to choosing which neurons fire. At
inference inactive units are exact zeros and the next linear layer skips their
weight columns (:mod:`foundation.adapters.dopamine.conditional`).

Exact identity at step 0 is obtained by *bypassing* the gate until training
starts: the gate is mixed in as ``1 - m + m * gate`` with the mix ``m`` a pure
function of the step, 0 at step 0 and 1 after ``warmup_steps``. With gamma = 1
and m = 0 the output is ``1 * h * 1``: bit-identical, in train and eval mode.
(Putting tau "far below the activation range" saturates the sigmoid, which
also flattens its gradient, so tau would barely train; the bypass avoids that.)

Temperature: annealed from ``temperature_start`` to ``temperature_end`` over
``anneal_steps`` (cosine, exponential, linear or constant). The defaults
(tau_init -1, T 1 -> 0.05, 10 warm-up steps) are ours (unverified).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from foundation.errors import ConfigError, did_you_mean

__all__ = ["SCHEDULES", "DopamineConfig", "gate_mix_at", "temperature_at"]

SCHEDULES = ("cosine", "exponential", "linear", "constant")


@dataclass
class DopamineConfig:
    """What the Dopamine adapter gates and how it anneals.

    Args:
        target_modules: suffix patterns (or one full-match regex) of the linear layers whose outputs are gated.
        exclude_modules: suffix patterns never gated.
        skip_modules: suffix patterns (or a regex) of plain ``nn.Linear`` layers that, at inference, compute only
            with the input columns that are non-zero somewhere in the batch (the consumers of gated units).
        tau_init: initial threshold of every unit.
        gamma_init: initial gain of every unit; 1.0 keeps the exact identity at step 0.
        temperature_start: T at step 0.
        temperature_end: T after ``anneal_steps``.
        anneal_steps: steps from ``temperature_start`` to ``temperature_end``.
        schedule: temperature schedule, one of ``SCHEDULES``.
        warmup_steps: steps over which the gate is mixed in (0 at step 0: exact identity); 0 = gate on at once.
        hard_in_eval: in eval mode use the hard gate 1[h > tau] (and enable column skipping).
        skip_strategy: "union" (batch-union of active columns) or "per-row" (each row's own active units).
        modules_to_save: module names trained whole and saved in the adapter file (a fine-tune's new task
            head, ``("head",)``), as peft's ``modules_to_save``.
    """

    target_modules: tuple[str, ...] | str = field(default=("mlp.fc1",),
                                                 metadata={"help": "linear layers whose outputs are gated"})
    exclude_modules: tuple[str, ...] = field(default=(), metadata={"help": "module-name suffixes never gated"})
    skip_modules: tuple[str, ...] | str = field(default=("mlp.fc2",),
                                               metadata={"help": "nn.Linear consumers that skip inactive columns"})
    tau_init: float = field(default=-1.0, metadata={"help": "initial per-unit threshold tau (unverified)"})
    gamma_init: float = field(default=1.0, metadata={"help": "initial per-unit gain gamma (> 0)"})
    temperature_start: float = field(default=1.0, metadata={"help": "gate temperature T at step 0 (> 0)"})
    temperature_end: float = field(default=0.05, metadata={"help": "gate temperature after annealing (> 0)"})
    anneal_steps: int = field(default=1000, metadata={"help": "steps of the temperature anneal (>= 1)"})
    schedule: str = field(default="cosine", metadata={"help": "cosine | exponential | linear | constant"})
    warmup_steps: int = field(default=10, metadata={"help": "steps to mix the gate in; > 0 gives exact identity"})
    hard_in_eval: bool = field(default=True, metadata={"help": "eval mode uses the hard gate 1[h > tau]"})
    skip_strategy: str = field(default="union",
                               metadata={"help": "column skipping: union (index_select) | per-row (embedding_bag)"})
    modules_to_save: tuple[str, ...] = field(default=(), metadata={"help": "modules trained whole and saved with "
                                                                           "the adapter (a new task head)"})

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules)
        if not isinstance(self.skip_modules, str):
            self.skip_modules = tuple(self.skip_modules)
        self.exclude_modules = tuple(self.exclude_modules)
        self.modules_to_save = tuple(self.modules_to_save or ())
        if not self.target_modules:
            raise ConfigError("DopamineConfig.target_modules: empty; name the linear layers to gate, e.g. "
                              "('mlp.fc1',)")
        if self.skip_strategy not in ("union", "per-row"):
            raise ConfigError(f"DopamineConfig.skip_strategy: unknown value {self.skip_strategy!r}; "
                              f"{did_you_mean(self.skip_strategy, ('union', 'per-row'))}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"DopamineConfig.schedule: unknown value {self.schedule!r}; "
                              f"{did_you_mean(self.schedule, SCHEDULES)}")
        for name in ("tau_init", "gamma_init", "temperature_start", "temperature_end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"DopamineConfig.{name}: expected a finite number, got {value!r}")
        if self.gamma_init <= 0:
            raise ConfigError(f"DopamineConfig.gamma_init: expected > 0, got {self.gamma_init!r}")
        if self.temperature_start <= 0 or self.temperature_end <= 0:
            raise ConfigError(f"DopamineConfig.temperature_start={self.temperature_start!r}, temperature_end="
                              f"{self.temperature_end!r}: both must be > 0")
        if self.temperature_end > self.temperature_start:
            raise ConfigError(f"DopamineConfig: temperature_end={self.temperature_end!r} exceeds temperature_start="
                              f"{self.temperature_start!r}; the temperature anneals downwards, swap them")
        if self.schedule == "constant" and self.temperature_end != self.temperature_start:
            raise ConfigError(f"DopamineConfig: schedule='constant' needs temperature_end == temperature_start, got "
                              f"{self.temperature_end!r} and {self.temperature_start!r}")
        for name in ("anneal_steps", "warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"DopamineConfig.{name}: expected an integer >= 0, got {value!r}")
        if self.anneal_steps < 1:
            raise ConfigError(f"DopamineConfig.anneal_steps: expected >= 1, got {self.anneal_steps!r}")


def temperature_at(step: int, config: DopamineConfig) -> float:
    """Gate temperature at ``step``: ``temperature_start`` at 0, ``temperature_end`` from ``anneal_steps`` on.

    cosine: T1 + (T0 - T1) (1 + cos(pi p)) / 2; exponential: T0 (T1 / T0)^p; linear: T0 + (T1 - T0) p;
    with p = min(step / anneal_steps, 1).
    """
    t0, t1 = config.temperature_start, config.temperature_end
    p = min(max(step, 0) / config.anneal_steps, 1.0)
    if config.schedule == "cosine":
        return t1 + (t0 - t1) * 0.5 * (1.0 + math.cos(math.pi * p))
    if config.schedule == "exponential":
        return t0 * (t1 / t0) ** p
    if config.schedule == "linear":
        return t0 + (t1 - t0) * p
    return t0


def gate_mix_at(step: int, config: DopamineConfig) -> float:
    """Share of the gate mixed in at ``step``: 0 at step 0 (gate bypassed), 1 from ``warmup_steps`` on."""
    if config.warmup_steps == 0:
        return 1.0
    return min(max(step, 0) / config.warmup_steps, 1.0)
