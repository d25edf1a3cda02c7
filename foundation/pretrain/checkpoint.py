"""Checkpoint folders of a run: DeepSpeed state, per-rank RNG, an atomic ``latest`` pointer, rotation.

Layout under ``<output_dir>/checkpoints``::

    step_00000050/            DeepSpeed files (model/optimizer states per rank)
    step_00000050/rng_rank0.json   RNG states of rank 0 (Python, NumPy, torch)
    step_00000050/COMPLETE    written last: the folder is whole
    latest                    the tag of the newest COMPLETE folder (replaced atomically)

A crash while a checkpoint is written leaves a folder without ``COMPLETE``;
``latest`` still names the previous good one, and the torso is removed at the
next successful save. A write that fails (disk full, an I/O error) on any rank
fails the save on every rank alike (the ranks gather their errors): ``latest``
is kept, the partial folder removed, and a :class:`CheckpointError` names the
folder, the rank and the cause.

A run folder is untrusted input (copied from a colleague, a shared drive): DeepSpeed
unpickles its state files with ``weights_only=False``, so :meth:`CheckpointDir.verify`
first reads every ``*.pt`` of a tag with torch's ``weights_only`` unpickler, which
refuses any global outside torch's safe set and the few DeepSpeed types a state file
holds (:data:`DEEPSPEED_STATE_GLOBALS`). Only a folder that passes reaches DeepSpeed.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.atomic import atomic_write_text
from foundation.errors import CheckpointError
from foundation.pretrain.distributed import is_collective_failure

__all__ = [
    "CheckpointDir",
    "DEEPSPEED_STATE_GLOBALS",
    "check_state_file",
    "capture_rng",
    "restore_rng",
    "seed_all",
]

_COMPLETE = "COMPLETE"
# the classes DeepSpeed (0.15 - 0.19) pickles into its optimizer states, beside tensors and plain containers
DEEPSPEED_STATE_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


def _allowed_globals() -> list[Any]:
    import importlib

    found = []
    for module, name in DEEPSPEED_STATE_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: that class cannot be in its files
            continue
    return found


def check_state_file(path: str | Path) -> None:
    """Refuse a state file that could run code when unpickled, or that does not read back whole.

    The file is read with ``torch.load(weights_only=True, mmap=True)``: the restricted unpickler builds only
    tensors, plain containers and the allow-listed DeepSpeed classes, and never calls anything else; with
    ``mmap`` the tensor data is mapped, not copied, so the check costs little memory.

    Raises:
        CheckpointError: the file names another global (a crafted or foreign pickle), or is truncated/corrupt.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it references {found.group(1)}" if found else str(err).strip().splitlines()[-1]
        raise CheckpointError(f"{path}: refused, the file asks to load something other than tensors and "
                              f"DeepSpeed state ({what}); a crafted file can run code when loaded, so it is not "
                              "loaded. Use a checkpoint from a run you trust, or re-run from its last safe "
                              "checkpoint") from err
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable state file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'truncated'}); the checkpoint is damaged, "
                              "resume or export from an earlier tag") from err


def _attempt(write: Callable[[], None]) -> str | None:
    """Run ``write``; return None, or its I/O error in words (the ranks agree on failures afterwards)."""
    try:
        write()
    except (OSError, RuntimeError) as err:
        if is_collective_failure(err):
            raise  # a lost peer, not a write error: the engine names the rank
        return f"{type(err).__name__}: {err}"
    return None


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


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (a rank that joins a resumed run with no RNG file of its own)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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

    def verify(self, tag: str) -> Path:
        """Check that checkpoint ``tag`` is complete and every state file in it is safe to hand to DeepSpeed.

        Returns:
            The tag's folder.

        Raises:
            CheckpointError: no such tag, no ``COMPLETE`` marker (an interrupted write), no state file, or a
                state file refused by :func:`check_state_file`.
        """
        folder = self.root / tag
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {folder} does not exist; complete tags: {self.complete_tags() or 'none'}")
        if not (folder / _COMPLETE).is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete (no {_COMPLETE} marker: its write was "
                                  f"interrupted); use a complete tag: {self.complete_tags() or 'none'}")
        states = sorted(folder.glob("*.pt"))
        if not states:
            raise CheckpointError(f"checkpoint {folder} holds no DeepSpeed state file (*.pt); is it a checkpoint?")
        for path in states:
            check_state_file(path)
        return folder

    def save(self, save_states: Callable[[Path, str], None], step: int, rank: int,
             barrier: Callable[[], None] | None = None, *,
             gather: Callable[[str | None], list[str | None]] | None = None) -> str:
        """Write a checkpoint on every rank, then mark it complete and move ``latest``.

        A write that fails on any rank (disk full, an I/O error) fails the save on every rank: ``latest`` stays
        on the previous complete checkpoint, rank 0 removes the partial folder, and each rank raises the same
        :class:`CheckpointError`, naming the folder, the rank and the cause.

        Args:
            save_states: writes this rank's share of the states into ``(root, tag)``
                (DeepSpeed's ``save_checkpoint``), on every rank. It must take part in the same collectives on
                every rank even when its write fails, and raise the write error afterwards.
            step: optimizer step, which names the tag.
            rank: global rank; rank 0 does the bookkeeping.
            barrier: a collective barrier over all ranks (enough for one process; ignored when ``gather``
                is given).
            gather: every rank's error text (None: fine), indexed by rank, on every rank: a collective that
                lets all ranks agree whether the save worked. Without it, only this rank's errors are seen.

        Returns:
            The tag written.

        Raises:
            CheckpointError: a rank could not write its states, its RNG file, or (rank 0) the markers.
        """
        if gather is None:
            def gather(error: str | None) -> list[str | None]:
                if barrier is not None:
                    barrier()
                return [error]

        tag = self.tag(step)
        previous = self._latest_tag()
        error = _attempt(lambda: self._write_states(save_states, tag, rank))
        self._agree(gather(error), tag, previous, rank, what="could not be written")
        error = _attempt(lambda: self._mark_complete(tag, step)) if rank == 0 else None
        self._agree(gather(error), tag, previous, rank, what="was written, but marking it complete failed")
        return tag

    def _write_states(self, save_states: Callable[[Path, str], None], tag: str, rank: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        save_states(self.root, tag)
        atomic_write_text(self.root / tag / f"rng_rank{rank}.json", json.dumps(capture_rng()), fsync=True)

    def _mark_complete(self, tag: str, step: int) -> None:
        atomic_write_text(self.root / tag / _COMPLETE, f"{step}\n", fsync=True)
        atomic_write_text(self.root / "latest", tag, fsync=True)
        self._rotate(keep=tag)

    def _latest_tag(self) -> str | None:
        pointer = self.root / "latest"
        return pointer.read_text().strip() if pointer.is_file() else None

    def _agree(self, errors: list[str | None], tag: str, previous: str | None, rank: int, what: str) -> None:
        """Raise the same CheckpointError on every rank when any rank reported an error."""
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if not failed:
            return
        folder = self.root / tag
        if (folder / _COMPLETE).is_file():
            left = "the folder itself is whole"
        elif rank == 0:
            shutil.rmtree(folder, ignore_errors=True)  # a partial folder only takes space (a full disk)
            left = "the partial folder was removed" if not folder.exists() else "the partial folder is left"
        else:
            left = "rank 0 removes the partial folder"
        now = self._latest_tag()
        if now == previous:
            kept = f"`latest` still names {previous}" if previous else "there is no earlier checkpoint"
        else:
            kept = f"`latest` now names {now}"
        causes = "; ".join(f"rank {r}: {e}" for r, e in failed)
        raise CheckpointError(
            f"checkpoint {folder} {what} ({causes}); {kept}, {left}. Free disk space or fix the error above, "
            f"then continue with --resume" + (f" from {previous}" if previous and now == previous else "")
        )

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
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; resume from an earlier tag")
        restore_rng(json.loads(path.read_text()))
