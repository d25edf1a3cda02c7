"""foundation-suite: training and fine-tuning domain foundation models.

``foundation.load(hub_id_or_folder)`` returns any model the suite saved (:mod:`foundation.loading`); it is
imported on first use, so ``import foundation`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":  # the package facade: foundation.loading sits above layer 0 and is reached by name
        return importlib.import_module("foundation.loading").load
    raise AttributeError(f"module 'foundation' has no attribute {name!r}")
