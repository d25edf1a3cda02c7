"""The outcome of a training run, shared by the engine (which fills it) and export (which reads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """What a finished (or stopped) run left behind.

    Args:
        output_dir: the run folder.
        step: optimizer steps done.
        stopped_early: a stop request or ``stop_after`` ended the run before ``train.steps``.
        checkpoint: the newest complete checkpoint folder.
        curves: the loss/LR plot (rank 0).
        metrics: the last logged step's loss and objective metrics.
        data_summary: a paragraph about the training data (the dataset's ``describe()``), for the model card.
        preprocessing: what the model expects of new data (the dataset's ``preprocessing()``), for config.json.
    """

    output_dir: Path
    step: int
    stopped_early: bool
    checkpoint: Path | None = None
    curves: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    data_summary: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
