"""A synthetic mixed-task batch for model / objective tests (every task of the helper table present)."""
from __future__ import annotations

import torch

from foundation.modalities.ultrasound.tasks import task_table
from tests.modalities.ultrasound._helpers import TASKS


def mixed_batch(S: int = 64, per_task: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    table = task_table(TASKS)
    n = per_task * len(TASKS)
    task = torch.arange(len(TASKS)).repeat_interleave(per_task)
    batch = {
        "image": torch.rand(n, 3, S, S, generator=g), "task": task, "label": torch.full((n,), -1),
        "mask": torch.full((n, S, S), -1), "box": torch.zeros(n, 4), "box_state": torch.full((n,), -1),
        "points": torch.zeros(n, 3, 2), "point_valid": torch.zeros(n, 3, dtype=torch.bool), "index": torch.arange(n),
    }
    for i, t in enumerate(task.tolist()):
        spec = table[TASKS[t]]
        if spec.type == "classification":
            batch["label"][i] = int(torch.randint(spec.num_classes, (1,), generator=g))
        elif spec.type == "segmentation":
            batch["mask"][i] = torch.randint(spec.num_classes, (S, S), generator=g)
        elif spec.type == "detection":
            batch["box_state"][i] = i % 2
            batch["box"][i] = torch.tensor([0.2, 0.3, 0.6, 0.7])
        else:
            batch["points"][i, : spec.num_points] = torch.rand(spec.num_points, 2, generator=g)
            batch["point_valid"][i, : spec.num_points] = True
    return batch
