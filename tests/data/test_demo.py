"""foundation.data.demo: one switch (data.source: demo) for every modality, and corpora generated once, whole."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundation.config import load_recipe
from foundation.data.demo import STAMP, check_source, demo_folder, is_demo, make_once
from foundation.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "foundation" / "recipes"


def _writer(calls: list[int], fail: bool = False):
    def write(folder: Path) -> None:
        calls.append(1)
        (folder / "a.txt").write_text(f"call {len(calls)}")
        if fail:
            raise RuntimeError("generator crashed")
    return write


def test_make_once_generates_once_per_parameters(tmp_path):
    calls: list[int] = []
    root = make_once(tmp_path / "corpus", {"n": 2}, _writer(calls))
    assert root == tmp_path / "corpus" and (root / "a.txt").read_text() == "call 1"
    assert json.loads((root / STAMP).read_text()) == {"n": 2}
    make_once(tmp_path / "corpus", {"n": 2}, _writer(calls))
    assert len(calls) == 1  # same parameters: nothing written
    make_once(tmp_path / "corpus", {"n": 3}, _writer(calls))
    assert len(calls) == 2 and (root / "a.txt").read_text() == "call 2"


def test_failed_generation_keeps_the_old_corpus(tmp_path):
    calls: list[int] = []
    make_once(tmp_path / "corpus", {"n": 1}, _writer(calls))
    with pytest.raises(RuntimeError, match="generator crashed"):
        make_once(tmp_path / "corpus", {"n": 5}, _writer(calls, fail=True))
    assert (tmp_path / "corpus" / "a.txt").read_text() == "call 1"
    assert json.loads((tmp_path / "corpus" / STAMP).read_text()) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["corpus"]  # no staging folder left


def test_switch_and_folder():
    assert is_demo("demo") and not is_demo("data/eeg") and not is_demo("")
    assert demo_folder("runs/cache/x") == Path("runs/cache/x-demo")
    with pytest.raises(ConfigError, match=r"data.source is empty; .*'demo' to generate the demo corpus \(data.source: demo\)"):
        check_source("")


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_names_its_source(recipe):
    text = (RECIPES / f"{recipe}.yaml").read_text()
    assert "\n  source: " in text  # one key, spelled out in every recipe
    cfg = load_recipe(recipe).data.config
    assert cfg.source == "demo" or recipe == "ultrasound-mtl"
    assert not hasattr(cfg, "demo") or not isinstance(cfg.demo, bool)


@pytest.mark.parametrize("recipe,override,match", [
    ("slim-brain-tiny", "data.source=", r"data.source is empty; .*data.source: demo"),
    ("deeperbrain-tiny", "data.source=", r"data.source is empty; .*data.source: demo"),
    ("ultrasound-mtl-tiny", "data.source=", r"data.source is empty; .*data.source: demo"),
    ("ultrasound-mtl-tiny", "data.demo=true", r"key data.demo: unknown key"),
    ("ultrasound-mtl-tiny", "data.data_root=x", r"key data.data_root: unknown key.*valid: .*source"),
])
def test_old_ways_of_asking_for_the_demo_are_refused(recipe, override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(recipe, [override])


def test_a_corpus_written_meanwhile_by_another_process_is_kept(tmp_path):
    root = tmp_path / "corpus"
    inner: list[int] = []

    def racing(folder: Path) -> None:
        (folder / "a.txt").write_text("outer")
        make_once(root, {"n": 1}, lambda f: (f / "a.txt").write_text("inner"))  # the other process, done first
        inner.append((root / "a.txt").stat().st_ino)

    make_once(root, {"n": 1}, racing)
    assert (root / "a.txt").read_text() == "inner" and (root / "a.txt").stat().st_ino == inner[0]
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["corpus"]
