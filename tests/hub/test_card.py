"""Model cards (foundation/hub/card.py): front matter the Hub client parses back, sections, validation."""
from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from foundation.errors import CheckpointError, ConfigError
from foundation.hub.card import ModelCardInfo, check_card_front_matter, render_model_card
from tests.hub._helpers import ToyConfig, randomized


def test_model_card_front_matter_and_sections(tmp_path):
    info = ModelCardInfo(description="A toy.", tags=("eeg",), metrics={"balanced_accuracy": 0.625, "kappa": 0.5},
                         recipe_yaml="model:\n  name: hub-toy\n", data_summary="12 synthetic subjects.",
                         base_model="lab/base-toy", dataset_name="faced", task_type="text-classification")
    randomized().save_pretrained(tmp_path / "carded", card=info)
    card = ModelCard.load(tmp_path / "carded" / "README.md")
    assert card.data.library_name == "foundation-suite"
    assert {"foundation-suite", "hub-toy", "eeg", "hub-test"} <= set(card.data.tags)
    assert card.data.base_model == "lab/base-toy"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == info.metrics
    assert all(r.dataset_name == "faced" and r.task_type == "text-classification" for r in card.data.eval_results)
    for section in ("## Training recipe", "name: hub-toy", "## Data", "12 synthetic subjects.", "| kappa | 0.5 |"):
        assert section in card.text


def test_card_info_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"metrics\['loss'\]: expected a finite number, got nan"):
        ModelCardInfo(metrics={"loss": float("nan")})
    with pytest.raises(ConfigError, match="recipe_yaml: not valid YAML"):
        ModelCardInfo(recipe_yaml="a: [1, 2")
    with pytest.raises(ConfigError, match="got the string 'eeg'"):
        ModelCardInfo(tags="eeg")


def test_minimal_card_has_no_model_index_and_round_trips(tmp_path):
    text = render_model_card(ModelCardInfo(metrics={"loss": 0.25}), "hub-toy", ToyConfig())
    (tmp_path / "README.md").write_text(text)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results is None and card.data.metrics == ["loss"]
    assert card.data.base_model is None and "## Training recipe" not in card.text
    assert '"hidden": [\n    8,\n    5\n  ]' in card.text
    check_card_front_matter(tmp_path / "README.md")


def test_check_card_front_matter_rejects_non_mappings(tmp_path):
    (tmp_path / "README.md").write_text("---\n- just\n- a list\n---\ntext\n")
    with pytest.raises(CheckpointError, match="must be a YAML mapping, got list"):
        check_card_front_matter(tmp_path / "README.md")
