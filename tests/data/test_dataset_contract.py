"""The dataset contract, parametrised over the built-in datasets of the registry.

Each registered dataset is built from its shipped tiny recipe's data section (smaller still), then goes
through prepare (once, then again as a no-op), len, one item, collate, describe and groups; a corrupt file
placed among good ones is left out, listed in ``report.json`` with its reason, and the good ones are kept.
A new built-in dataset without a case here fails :func:`test_every_builtin_dataset_has_a_case`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from foundation.config import load_recipe
from foundation.data.demo import demo_folder
from foundation.data.protocol import DatasetProtocol, prepare_dataset
from foundation.errors import ConfigError
from foundation.registry import DATASETS


def _corrupt_eeg(root: Path) -> Path:
    folder = root / "sub-99" / "ses-01" / "eeg"
    folder.mkdir(parents=True)
    bad = folder / "sub-99_ses-01_task-demo_eeg.fif"
    bad.write_bytes(b"\x00not a fif file" * 64)
    return bad


def _corrupt_fmri(root: Path) -> Path:
    folder = root / "sub-99" / "func"
    folder.mkdir(parents=True)
    bad = folder / "sub-99_task-demo_bold.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated gzip" * 16)
    return bad


def _corrupt_ultrasound(root: Path) -> Path:
    bad = sorted((root / "images").iterdir())[0]
    bad.write_bytes(b"\x89PNG but not really" * 8)
    return bad


@dataclass
class Case:
    recipe: str
    overrides: tuple[str, ...]
    corrupt: Callable[[Path], Path]  # writes a bad file into a copy of the demo corpus; returns it
    source: str = ""  # the data folder inside the demo corpus ("" = its root)
    reason: str = ""  # what the report says about the corrupt file


CASES = {
    "eeg-windows": Case("deeperbrain-tiny", ("data.demo.n_subjects=3", "data.demo.blocks_per_class=1"), _corrupt_eeg,
                        reason="mne could not read it"),
    "fmri-windows": Case("slim-brain-tiny", ("data.demo_subjects=4", "data.demo_frames=48", "data.top_k=2"),
                         _corrupt_fmri, reason="nibabel cannot read it"),
    "ultrasound-csv": Case("ultrasound-mtl-tiny", ("data.demo_images_per_task=2", "data.batch_size=2"),
                           _corrupt_ultrasound, source="csv_files", reason="not a readable image"),
    "ultrasound-images": Case("ultrasound-mtl-tiny-probe", ("data.demo_images_per_task=8",), _corrupt_ultrasound,
                              source="csv_files", reason="not a readable image"),
}
BUILTIN = [name for name in DATASETS.names() if DATASETS.target(name) is not None]


def test_every_builtin_dataset_has_a_case():
    assert sorted(CASES) == sorted(BUILTIN)


def _config(name: str, cache: Path, *extra: str):
    case = CASES[name]
    recipe = load_recipe(case.recipe, [*case.overrides, f"data.cache_dir={cache}", *extra])
    assert recipe.data.name == name, f"recipe {case.recipe} serves {recipe.data.name}, not {name}"
    return recipe.data.config


def _check_batch(batch, n: int) -> None:
    assert isinstance(batch, dict) and batch
    for key, value in batch.items():
        assert isinstance(value, torch.Tensor), key
    sizes = {v.shape[0] for v in batch.values()}
    assert len(sizes) == 1 and next(iter(sizes)) >= n  # one batch axis (ultrasound items are whole batches)


def _check_optional_methods(ds) -> None:
    """item_labels equals the items' own labels; item_sources names existing files; preprocessing is a
    JSON-able contract stating its modality."""
    import json

    from foundation.data.protocol import class_labels, item_rows

    assert set(ds.preprocessing()) >= {"modality"} and json.loads(json.dumps(ds.preprocessing()))
    if hasattr(ds, "item_labels"):
        fast = ds.item_labels()
        slow = [int(ds[i]["label"]) for i in range(len(ds))]
        assert fast == slow and class_labels(ds) == slow
    if hasattr(ds, "item_sources"):
        sources = ds.item_sources()
        assert len(sources) == len(ds) and all(Path(s.split("#")[0]).is_file() for s in set(sources))
        assert len(set(sources)) >= 2
        rows = item_rows(ds, [0, len(ds) - 1])
        assert [r["index"] for r in rows] == [0, len(ds) - 1] and rows[1]["source"] == sources[-1]
        assert rows[1]["subject"] == ds.groups()[-1]


@pytest.mark.parametrize("name", BUILTIN)
def test_dataset_contract(name, tmp_path):
    cls = DATASETS.get(name)
    cfg = _config(name, tmp_path / "cache")
    assert isinstance(cfg, cls.config_class)
    report = prepare_dataset(cls, cfg)
    assert report["n_left_out"] == 0 and report["n_kept"] == report["n_sources"] > 0
    assert all(s["status"] == "kept" for s in report["sources"])

    ds = cls(cfg)
    assert isinstance(ds, DatasetProtocol)
    assert len(ds) > 0
    item = ds[0]
    assert isinstance(item, dict) and all(isinstance(v, torch.Tensor) for v in item.values())
    _check_batch(ds.collate([ds[0], ds[len(ds) - 1]]), 2)
    text = ds.describe()
    assert isinstance(text, str) and len(text) > 40 and text.endswith(".")
    try:
        groups = ds.groups()
    except ConfigError as err:  # items that mix groups say so and name the alternative
        assert "data.split" in str(err)
    else:
        assert len(groups) == len(ds) and len(set(groups)) >= 2
    _check_optional_methods(ds)

    def files() -> list[Path]:  # the lock files beside caches and corpora name their last holder: not data
        return sorted(p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock"))

    written = files()
    stamps = [p.stat().st_mtime_ns for p in written]
    assert cls.prepare(cfg) == report  # second prepare: a no-op, nothing rewritten
    assert files() == written
    assert [p.stat().st_mtime_ns for p in written] == stamps


@pytest.mark.parametrize("name", BUILTIN)
def test_corrupt_file_is_left_out_and_reported(name, tmp_path):
    case, cls = CASES[name], DATASETS.get(name)
    demo_cfg = _config(name, tmp_path / "demo-cache")
    good = cls.prepare(demo_cfg)
    user = tmp_path / "user"
    shutil.copytree(demo_folder(demo_cfg.cache_dir), user)
    bad = case.corrupt(user)
    source = user / case.source if case.source else user
    cfg = dataclasses.replace(demo_cfg, source=str(source), cache_dir=str(tmp_path / "user-cache"))
    report = prepare_dataset(cls, cfg)
    left = [s for s in report["sources"] if s["status"] == "left_out"]
    assert len(left) == 1 and str(bad) in left[0]["source"] + left[0]["reason"]
    assert case.reason in left[0]["reason"]
    demo_root = str(demo_folder(demo_cfg.cache_dir))
    kept_before = {s["source"].replace(demo_root, str(user)) for s in good["sources"]}
    kept_now = {s["source"] for s in report["sources"] if s["status"] == "kept"}
    assert kept_now == kept_before - {left[0]["source"]}  # every good source kept
    assert report["n_kept"] == report["n_sources"] - 1
    saved = json.loads(next(Path(cfg.cache_dir).rglob("report.json")).read_text())
    assert saved == report
    ds = cls(cfg)  # the good sources are served
    assert len(ds) > 0 and "1 left out" in ds.describe()
