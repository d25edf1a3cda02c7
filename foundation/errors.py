"""Errors a user can cause.

Every class here is raised for a problem the user can fix: a bad recipe key, a
corrupt file, a checkpoint that does not match its model, an unreachable Hub.
Messages name *where* (file, recipe key, endpoint), *what* (expected against
received) and *how to fix it*.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "FoundationError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "HubError",
    "TrainingError",
    "did_you_mean",
]


class FoundationError(Exception):
    """Base class of every user-facing error of the suite."""


class ConfigError(FoundationError, ValueError):
    """A recipe, override or constructor argument is invalid (unknown key, wrong type, bad range)."""


class DataError(FoundationError, ValueError):
    """An input file or record is unreadable, corrupt or inconsistent."""


class CheckpointError(FoundationError, RuntimeError):
    """A checkpoint or exported model is missing, incomplete or does not match the model."""


class HubError(FoundationError, RuntimeError):
    """The Hugging Face Hub (or a compatible endpoint) could not be reached or refused a request."""


class TrainingError(FoundationError, RuntimeError):
    """Training cannot go on (non-finite loss, diverged run)."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ``"did you mean 'x'? valid: a, b, c"`` for an unknown ``name``.

    Args:
        name: what the user typed.
        valid: the accepted names.

    Returns:
        A message fragment naming the closest valid name (when one is close) and
        listing all valid names in sorted order.
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid: {', '.join(valid) if valid else '(none)'}"
