"""BIDS fMRI through pybids' ``BIDSLayout``: the ``*_bold`` runs, their inherited metadata, their subject.

A folder with a ``dataset_description.json`` is a BIDS dataset. pybids indexes it (without
validation; ``derivatives/``, ``sourcedata/`` and ``code/`` are not indexed), lists the BOLD
runs (``suffix="bold"``, ``.nii`` / ``.nii.gz``) and resolves each run's metadata by the BIDS
inheritance principle: a top-level ``task-rest_bold.json`` applies to every run below it, a
run's own sidecar overrides it. The subject entity groups the runs of one subject for splits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from foundation.errors import DataError

__all__ = ["bids_root", "bids_layout", "bids_bold_runs", "bids_metadata"]


def bids_root(path: Path) -> Path | None:
    """The BIDS dataset ``path`` belongs to: the nearest folder above it with a ``dataset_description.json``
    (a derivatives pipeline folder such as ``derivatives/fmriprep`` is a dataset of its own); None when there is none."""
    for parent in [path, *path.parents] if path.is_dir() else path.parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def bids_layout(root: Path) -> Any:
    """``bids.BIDSLayout(root, validate=False)``, its errors as DataError naming the folder."""
    try:
        from bids import BIDSLayout
    except ImportError as err:  # pragma: no cover - pybids is a dependency
        raise ImportError("reading a BIDS fMRI dataset needs pybids: pip install pybids") from err
    try:
        return BIDSLayout(str(root), validate=False)
    except Exception as err:  # pybids raises BIDSValidationError, ValueError, json errors...
        raise DataError(f"{root}: pybids cannot index this BIDS dataset ({type(err).__name__}: {err}); "
                        "check dataset_description.json and the sidecars") from err


def bids_bold_runs(root: Path) -> list[Path]:
    """The raw BOLD runs of the dataset at ``root`` (derivatives excluded), sorted."""
    layout = bids_layout(root)
    files = layout.get(suffix="bold", extension=[".nii", ".nii.gz"], return_type="filename")
    return sorted(Path(f) for f in files)


def bids_metadata(path: Path, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, entities)`` of one run: its sidecar fields after BIDS inheritance, and its entities.

    Raises:
        DataError: ``path`` is not a file pybids indexes in ``root`` (not a BIDS name, or excluded).
    """
    layout = bids_layout(root)
    f = layout.get_file(str(path))
    if f is None:
        raise DataError(f"{path}: not a file of the BIDS dataset {root} (not a valid BIDS name, or under "
                        "derivatives/ or sourcedata/); rename it or read it from a plain folder")
    try:
        return dict(f.get_metadata()), dict(f.get_entities())
    except Exception as err:
        raise DataError(f"{path}: its BIDS sidecars cannot be read ({type(err).__name__}: {err}); fix the JSON") from err
