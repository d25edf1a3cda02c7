"""Task sampling for multi-task batches: uniform, size-proportional and temperature modes.

With ``p_t`` the chance that a batch (or, with mixed batches, a sample) comes from task
``t`` of ``n_t`` training images:

- ``uniform``: ``p_t = 1 / T`` (the published baseline: one random task per step);
- ``proportional``: ``p_t = n_t / sum n``;
- ``temperature``: ``p_t ~ n_t ** (1 / tau)`` (tau = 1 is proportional, tau -> inf is uniform),
  as in multilingual / multi-task sampling (Arivazhagan et al., "Massively Multilingual
  Neural Machine Translation in the Wild", https://arxiv.org/abs/1907.05019).

A plan is a list of record indices; single-task plans draw one task then ``batch_size``
images of it, mixed plans draw a task per image.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from foundation.errors import ConfigError, DataError, did_you_mean

__all__ = ["SAMPLING_MODES", "task_probabilities", "BatchPlanner"]

SAMPLING_MODES = ("uniform", "proportional", "temperature")


def task_probabilities(sizes: Mapping[str, int], mode: str, temperature: float = 2.0) -> dict[str, float]:
    """Sampling probability of each task from its number of images.

    Raises:
        ConfigError: unknown mode or a temperature <= 0.
        DataError: a task with no images.
    """
    if mode not in SAMPLING_MODES:
        raise ConfigError(f"sampling mode {mode!r} unknown; {did_you_mean(mode, SAMPLING_MODES)}")
    if temperature <= 0:
        raise ConfigError(f"sampling temperature must be > 0, got {temperature}")
    empty = [t for t, n in sizes.items() if n < 1]
    if empty:
        raise DataError(f"task {empty[0]!r} has no training images; remove it from the tasks or add data")
    n = torch.tensor([float(v) for v in sizes.values()], dtype=torch.float64)
    if mode == "uniform":
        w = torch.ones_like(n)
    elif mode == "proportional":
        w = n
    else:
        w = n ** (1.0 / temperature)
    p = w / w.sum()
    return dict(zip(sizes, p.tolist()))


class BatchPlanner:
    """Draws batches of record indices, one task per batch or a task per image.

    Args:
        by_task: task id -> indices of its records.
        batch_size: images per batch.
        mode: a :data:`SAMPLING_MODES` entry.
        temperature: tau of the temperature mode.
        mixed: draw a task per image instead of per batch.
    """

    def __init__(self, by_task: Mapping[str, Sequence[int]], batch_size: int, mode: str = "uniform",
                 temperature: float = 2.0, mixed: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.tasks = list(by_task)
        self.pools = [torch.as_tensor(list(by_task[t]), dtype=torch.long) for t in self.tasks]
        self.probs = task_probabilities({t: len(p) for t, p in zip(self.tasks, self.pools)}, mode, temperature)
        self._p = torch.tensor([self.probs[t] for t in self.tasks], dtype=torch.float64)
        self.batch_size, self.mixed = batch_size, mixed
        self.total = sum(len(p) for p in self.pools)

    def __len__(self) -> int:
        """Batches per epoch: enough to show as many images as there are records."""
        return max(1, -(-self.total // self.batch_size))

    def plan(self, generator: torch.Generator | None = None) -> list[int]:
        """One batch of record indices."""
        if self.mixed:
            tasks = torch.multinomial(self._p, self.batch_size, replacement=True, generator=generator).tolist()
        else:
            tasks = [int(torch.multinomial(self._p, 1, generator=generator))] * self.batch_size
        out = []
        for t in tasks:
            pool = self.pools[t]
            out.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
        return out
