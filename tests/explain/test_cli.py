"""``foundation explain`` on each shipped model (tiny, saved as a fine-tune folder), through the command line."""
from __future__ import annotations

import json

import pytest
import torch

from foundation.cli import main
from foundation.finetune.task_model import TaskModel
from tests.finetune.test_runner_modalities import MODALITIES

pytestmark = pytest.mark.slow
METHODS = {"eeg": ["ig", "lrp", "rollout", "relp"], "fmri": ["ig", "lrp", "rollout"], "ultrasound": ["gradcam", "lrp"]}
FILES = {"eeg": ["eeg_ig.csv", "topomap_ig.png", "topomap_rollout.png", "relp.json"],
         "fmri": ["voxels_ig_scan0.nii.gz", "glass_ig.png", "statmap_ig.png", "saliency_scan0.png"],
         "ultrasound": ["overlays.png"]}


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_explain_command_on_a_fine_tune(modality, tmp_path, capsys):
    torch.manual_seed(0)
    (recipe, *data), encoder = MODALITIES[modality](tmp_path)
    n_classes = {"eeg": 3, "fmri": 4, "ultrasound": 3}[modality]
    folder = tmp_path / "model"
    TaskModel.for_encoder(encoder, n_classes).save_pretrained(folder)
    out = tmp_path / "explain"
    sets = [a for kv in data for a in ("--set", kv)]
    args = ["explain", "--model", str(folder), "--data", recipe, *sets, "--out", str(out), "--n-items", "6",
            "--ig-steps", "4", "--method", *METHODS[modality]]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modality"] == modality and summary["fine_tune"]
    assert set(summary["seconds_per_item"]) == set(METHODS[modality]) - {"relp"}
    for name in FILES[modality] + ["layer_activity.csv", "layer_activity.png", "deletion.csv", "skip_layers.csv"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 50, name
    assert "explanations of" in capsys.readouterr().out


def test_explain_refuses_a_method_that_does_not_apply(tmp_path, capsys):
    torch.manual_seed(0)
    (recipe, *data), encoder = MODALITIES["fmri"](tmp_path)
    folder = tmp_path / "model"
    TaskModel.for_encoder(encoder, 4).save_pretrained(folder)
    sets = [a for kv in data for a in ("--set", kv)]
    assert main(["explain", "--model", str(folder), "--data", recipe, *sets, "--out", str(tmp_path / "o"),
                 "--method", "relp"]) == 2
    assert "'relp' does not apply to this model; valid here: ig, lrp, occlusion, rollout, random" in capsys.readouterr().err


def test_predict_skips_an_idle_layer_and_predicts_the_same(tmp_path, capsys):
    """``foundation predict --skip-idle-below``: a block that adds nothing is measured idle, skipped, and the
    predictions do not change."""
    from torch import nn

    torch.manual_seed(0)
    (recipe, *data), encoder = MODALITIES["eeg"](tmp_path)
    for lin in (encoder.blocks[1].attn.proj, encoder.blocks[1].mlp.fc2):
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
    folder = tmp_path / "model"
    TaskModel.for_encoder(encoder, 3).save_pretrained(folder)
    sets = [a for kv in data for a in ("--set", kv)]
    plain, skipped = tmp_path / "plain.csv", tmp_path / "skipped.csv"
    assert main(["predict", "--model", str(folder), "--data", recipe, *sets, "--out", str(plain)]) == 0
    assert main(["predict", "--model", str(folder), "--data", recipe, *sets, "--out", str(skipped),
                 "--skip-idle-below", "0.5"]) == 0
    assert "skipping 1 idle layer(s): encoder.blocks.1" in capsys.readouterr().out
    assert plain.read_text() == skipped.read_text()


def test_explain_a_pretrained_ultrasound_model_by_its_segmentation_head(tmp_path):
    from foundation.modalities.ultrasound.model import UltrasoundMTL, UltrasoundMTLConfig

    torch.manual_seed(0)
    folder = tmp_path / "export"
    UltrasoundMTL(UltrasoundMTLConfig(backbone="tinynet_e", fpn_dim=16, head_dim=8,
                                      tasks=("breast_3cls", "lung"))).save_pretrained(folder)
    data = [f"data.cache_dir={tmp_path / 'us'}", "data.demo_images_per_task=8", "data.tasks=[breast_3cls,lung]",
            "data.split=all"]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(folder), "--data", "ultrasound-mtl-tiny",
                 *[a for kv in data for a in ("--set", kv)], "--out", str(out), "--task", "lung", "--n-items", "3",
                 "--ig-steps", "4", "--method", "gradcam", "ig", "random"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["fine_tune"] and summary["head"] == "segmentation (lung)"
    assert set(summary["pointing_game"]) == {"gradcam", "ig", "random"}
    assert all(0 <= v["hit_rate"] <= 1 and v["n"] >= 1 for v in summary["pointing_game"].values())
    assert (out / "overlays.png").stat().st_size > 5000 and (out / "layer_activity.png").is_file()
