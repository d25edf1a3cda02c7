"""Checkpoint folders of a run: DeepSpeed state, per-rank RNG, an atomic ``latest`` pointer, rotation.

Layout under ``<output_dir>/checkpoints``::

    step_00000050/            DeepSpeed files (model/optimizer states per rank)
    step_00000050/rng_rank0.json   RNG states of rank 0 (Python, NumPy, torch)
    step_00000050/COMPLETE    written last: the folder is whole
    latest                    the tag of the newest COMPLETE folder (replaced atomically)

A crash while a checkpoint is written leaves a folder without ``COMPLETE``;
``latest`` still names the previous good one, and the torso is removed at the
next successful save.
"""
from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.atomic import atomic_write_text
from foundation.errors import CheckpointError

__all__ = [
    "CheckpointDir",
    "capture_rng",
    "restore_rng",
]

_COMPLETE = "COMPLETE"


def capture_rng() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch (CPU, and CUDA when present) as JSON-ready data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class CheckpointDir:
    """The checkpoint folder of one run.

    Args:
        root: ``<output_dir>/checkpoints``.
        keep_last: complete checkpoints kept after each save.
    """

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    @staticmethod
    def tag(step: int) -> str:
        return f"step_{step:08d}"

    def complete_tags(self) -> list[str]:
        """Tags of whole checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / _COMPLETE).is_file())

    def latest(self) -> str | None:
        """The tag named by ``latest``, checked to be complete; None when the run has no checkpoint."""
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        if not (self.root / tag / _COMPLETE).is_file():
            raise CheckpointError(
                f"{pointer} names {tag!r}, which is not a complete checkpoint; point it at one of "
                f"{self.complete_tags() or 'none'} or start without --resume"
            )
        return tag

    def save(self, save_states: Callable[[Path, str], None], step: int, rank: int,
             barrier: Callable[[], None]) -> str:
        """Write a checkpoint on every rank, then mark it complete and move ``latest``.

        Args:
            save_states: writes this rank's share of the states into ``(root, tag)``
                (DeepSpeed's ``save_checkpoint``), on every rank.
            step: optimizer step, which names the tag.
            rank: global rank; rank 0 does the bookkeeping.
            barrier: a collective barrier over all ranks.

        Returns:
            The tag written.
        """
        tag = self.tag(step)
        self.root.mkdir(parents=True, exist_ok=True)
        save_states(self.root, tag)
        atomic_write_text(self.root / tag / f"rng_rank{rank}.json", json.dumps(capture_rng()), fsync=True)
        barrier()
        if rank == 0:
            atomic_write_text(self.root / tag / _COMPLETE, f"{step}\n", fsync=True)
            atomic_write_text(self.root / "latest", tag, fsync=True)
            self._rotate(keep=tag)
        barrier()
        return tag

    def _rotate(self, keep: str) -> None:
        complete = self.complete_tags()
        doomed = set(complete[: max(len(complete) - self.keep_last, 0)])
        doomed |= {p.name for p in self.root.iterdir()
                   if p.is_dir() and p.name.startswith("step_") and not (p / _COMPLETE).is_file()}
        doomed.discard(keep)
        for name in doomed:
            shutil.rmtree(self.root / name, ignore_errors=True)

    def load_rng(self, tag: str, rank: int) -> None:
        """Restore this rank's RNG states from checkpoint ``tag``."""
        path = self.root / tag / f"rng_rank{rank}.json"
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: the checkpoint was written by a run with fewer ranks; resume with the same "
                "number of processes to continue exactly"
            )
        restore_rng(json.loads(path.read_text()))
