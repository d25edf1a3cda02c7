"""The suite's modalities (EEG, fMRI, ultrasound); each subpackage registers its models, datasets and objectives."""
from __future__ import annotations

import importlib
import pkgutil

__all__ = ["load_builtin"]


def load_builtin() -> list[str]:
    """Import every modality subpackage so that its components are registered.

    Returns:
        The names of the imported subpackages.
    """
    names = [m.name for m in pkgutil.iter_modules(__path__) if m.ispkg]
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names
