"""The task table: the 27 challenge tasks, user tasks from a recipe, and their errors."""
from __future__ import annotations

from collections import Counter

import pytest

from foundation.errors import ConfigError
from foundation.modalities.ultrasound.tasks import BUILTIN_TASKS, task_table


def test_builtin_table_matches_the_challenge():
    assert len(BUILTIN_TASKS) == 27
    assert Counter(t.type for t in BUILTIN_TASKS.values()) == {"segmentation": 12, "classification": 9,
                                                               "detection": 3, "regression": 3}
    assert {t.task_id for t in BUILTIN_TASKS.values() if not t.flip_safe} == {"fetal_head_pos_cls",
                                                                              "fetal_sacral_pos_cls"}
    assert BUILTIN_TASKS["IUGC"].num_points == 3 and BUILTIN_TASKS["cardiac_multi"].num_classes == 4
    assert BUILTIN_TASKS["fetal_abdomen_multi"].num_classes == 5 and BUILTIN_TASKS["fetal_head_pos_cls"].num_classes == 8


def test_extra_task_and_subset():
    table = task_table((), {"kidney_cls": {"type": "classification", "num_classes": 4, "flip_safe": False}})
    assert list(table)[-1] == "kidney_cls" and table["kidney_cls"].metric == "auc" and len(table) == 28
    assert list(task_table(("lung", "FUGC"))) == ["lung", "FUGC"]


@pytest.mark.parametrize("extra,match", [
    ({"lung": {"type": "segmentation", "num_classes": 2}}, "already a built-in"),
    ({"x": {"type": "segmentaton", "num_classes": 2}}, "did you mean 'segmentation'"),
    ({"x": {"type": "classification", "num_classes": 1}}, "num_classes >= 2"),
    ({"x": {"type": "regression"}}, "num_points >= 1"),
    ({"x": {"type": "regression", "num_points": 2, "colour": 1}}, "unknown field"),
    ({"a.b": {"type": "classification", "num_classes": 2}}, "letters, digits"),
])
def test_bad_extra_tasks(extra, match):
    with pytest.raises(ConfigError, match=match):
        task_table((), extra, "recipe r.yaml, key model")


def test_unknown_task_in_subset():
    with pytest.raises(ConfigError, match="did you mean 'lung'"):
        task_table(("lunk",))


def test_a_task_declared_in_a_recipe_gets_a_head(tmp_path):
    from foundation.config import load_recipe
    from foundation.pretrain.components import build_model

    recipe = tmp_path / "us-extra.yaml"
    recipe.write_text(
        "name: us-extra\n"
        "model:\n  name: ultrasound-mtl\n  backbone: tinynet_e\n  fpn_dim: 8\n  head_dim: 8\n"
        "  tasks: [lung, kidney_cls]\n"
        "  extra_tasks: &extra\n    kidney_cls: {type: classification, num_classes: 4, flip_safe: false}\n"
        "data:\n  name: ultrasound-csv\n  tasks: [lung, kidney_cls]\n  extra_tasks: *extra\n"
        "objective:\n  name: ultrasound-mtl\n  tasks: [lung, kidney_cls]\n  extra_tasks: *extra\n")
    loaded = load_recipe(str(recipe))
    model = build_model(loaded)
    assert model.task_ids == ["lung", "kidney_cls"] and model.heads["kidney_cls"].fc.out_features == 4
    assert not loaded.data.config.extra_tasks["kidney_cls"]["flip_safe"]
