"""Dopamine: per-neuron thresholds and gains on a frozen model, with hard-gated conditional computation.

Files: ``config`` (dataclass + schedules), ``layer`` (wraps one layer),
``model`` (injection, schedule, save/load), ``conditional`` (column-skipping
linear layer, multiply-add counts), ``attribution`` (which units fire per class).
"""
from foundation.adapters.dopamine.attribution import neuron_attribution, write_attribution
from foundation.adapters.dopamine.conditional import MacCount, SkipInactiveLinear
from foundation.adapters.dopamine.config import SCHEDULES, DopamineConfig, gate_mix_at, temperature_at
from foundation.adapters.dopamine.layer import DopamineLayer
from foundation.adapters.dopamine.model import PEFT_TYPE, DopamineModel

__all__ = [
    "DopamineConfig",
    "DopamineLayer",
    "DopamineModel",
    "SkipInactiveLinear",
    "MacCount",
    "neuron_attribution",
    "write_attribution",
    "temperature_at",
    "gate_mix_at",
    "SCHEDULES",
    "PEFT_TYPE",
]
