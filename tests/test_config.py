"""Recipes: loading, overrides, and the errors a user sees for bad ones."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from foundation.config import (DeepSpeedConfig, TrainConfig, dataclass_from_dict, dataclass_to_dict, list_recipes,
                               load_recipe, parse_overrides, recipe_from_dict, yaml_load)
from foundation.errors import ConfigError
from tests.pretrain._launch import TOY_RECIPE


@dataclass
class _Cfg:
    sizes: tuple[int, ...] = field(default=(1, 2))
    pair: tuple[float, float] = (0.5, 1.0)
    name: str | None = None
    flag: bool = False


def test_round_trip_keeps_tuples_and_types():
    cfg = _Cfg(sizes=(3, 4, 5), pair=(1.0, 2.0), name="x", flag=True)
    assert dataclass_from_dict(_Cfg, dataclass_to_dict(cfg)) == cfg


@pytest.mark.parametrize("data,match", [
    ({"sizse": [1]}, r"_Cfg\.sizse: unknown key; did you mean 'sizes'\?"),
    ({"sizes": "12"}, r"sizes: expected a list"),
    ({"pair": [1.0]}, r"pair: expected 2 values"),
    ({"flag": 1}, r"flag: expected bool"),
    ({"sizes": [1, 2.5]}, r"sizes\[1\]: expected int, got float"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        dataclass_from_dict(_Cfg, data, where="_Cfg")


def test_yaml_reads_scientific_floats():
    assert yaml_load("lr: 3e-4\nn: 3\n") == {"lr": 3e-4, "n": 3}


def test_load_toy_recipe_with_overrides():
    recipe = load_recipe(str(TOY_RECIPE), ["train.lr=1e-2", "deepspeed.zero_stage=3", "model.depth=1"])
    assert recipe.train.lr == 1e-2 and recipe.deepspeed.zero_stage == 3 and recipe.model.config.depth == 1
    again = recipe_from_dict(yaml_load(recipe.to_yaml()))
    assert again.to_dict() == recipe.to_dict()


@pytest.mark.parametrize("override,match", [
    ("train.lrr=1", r"key train\.lrr: unknown key; did you mean 'lr'\?"),
    ("train.lr=fast", r"train\.lr: expected float, got str 'fast'"),
    ("model.dpth=1", r"model\.dpth: unknown key; did you mean 'depth'\?"),
    ("trian.lr=1", r"key trian: unknown section; did you mean 'train'\?"),
    ("model.name=toy-ma", r"unknown model 'toy-ma'; did you mean 'toy-mae'\?"),
    ("deepspeed.zero_stage=4", r"zero_stage must be 0, 1, 2 or 3"),
    ("train.warmup_steps=1000", r"warmup_steps \(1000\) exceeds train.steps"),
])
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(str(TOY_RECIPE), [override])


def test_override_syntax_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="unknown recipe 'no-such-recipe'"):
        load_recipe("no-such-recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_recipe(str(bad))
    plugin = tmp_path / "plugin.yaml"
    plugin.write_text("imports: [no_such_module_xyz]\n")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        load_recipe(str(plugin))


def test_section_checks():
    with pytest.raises(ConfigError, match="extra sets bf16"):
        DeepSpeedConfig(extra={"bf16": {"enabled": True}})
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        TrainConfig(lr=0.0)


def test_shipped_recipes_load():
    for name in list_recipes():
        load_recipe(name)


def test_a_non_utf8_recipe_is_a_config_error(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml' is not UTF-8 text .*save it as UTF-8"):
        load_recipe(str(bad))


def test_a_folder_named_like_a_shipped_recipe_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deeperbrain-tiny").mkdir()  # e.g. the output folder of an earlier run
    assert load_recipe("deeperbrain-tiny").name == "deeperbrain-tiny"
    (tmp_path / "deeperbrain-tiny-probe").write_text("name: mine\n")
    with pytest.raises(ConfigError, match="key model"):  # a file of that name wins: it is read as the recipe
        load_recipe("deeperbrain-tiny-probe")
    (tmp_path / "no-such-recipe").mkdir()
    with pytest.raises(ConfigError, match=r"unknown recipe 'no-such-recipe' \('no-such-recipe' is a folder"):
        load_recipe("no-such-recipe")
