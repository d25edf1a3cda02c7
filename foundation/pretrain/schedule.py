"""Learning-rate schedule: linear warmup then cosine decay, as a pure function of the step."""
from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear from ``1 / (warmup_steps + 1)`` to 1 over the warmup, then half a cosine
    from 1 down to ``min_ratio`` at ``total_steps``; ``min_ratio`` after that.

    Args:
        step: optimizer steps already taken.
        total_steps: length of the whole schedule.
        warmup_steps: steps of linear warmup (0 for none).
        min_ratio: floor of the cosine as a fraction of the peak.

    Returns:
        A float in ``[min_ratio, 1]`` (or the warmup ramp below it).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
