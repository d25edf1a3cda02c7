"""Predictions mapped back to original pixels, the three submission files and masks, partial test sets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from foundation.errors import DataError
from foundation.modalities.ultrasound.csv_reader import read_csv_folder
from foundation.modalities.ultrasound.evaluate import evaluate, results_markdown, save_prediction_grids
from foundation.modalities.ultrasound.predict import predict
from foundation.modalities.ultrasound.submission import SUBMISSION_FILES, write_submission
from foundation.modalities.ultrasound.tasks import task_table
from tests.modalities.ultrasound._helpers import TASKS


class _Constant(torch.nn.Module):
    """Answers in network space with known constants: box [.25,.25,.75,.75], points (.25,.5)/(.75,.5),
    class 1 on the left half of the mask, class probabilities favouring class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.table = task_table(TASKS)
        self.task_ids = list(self.table)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, image, task):
        S = image.shape[-1]
        out = {}
        for t in torch.unique(task).tolist():
            tid, rows = self.task_ids[t], (task == t).nonzero(as_tuple=True)[0]
            spec, n = self.table[tid], len(rows)
            if spec.type == "classification":
                res = torch.zeros(n, spec.num_classes)
                res[:, 1] = 3.0
            elif spec.type == "segmentation":
                res = torch.zeros(n, spec.num_classes, S, S)
                res[:, 1, :, : S // 2] = 5.0
            elif spec.type == "detection":
                res = {"box": torch.tensor([[0.25, 0.25, 0.75, 0.75]]).repeat(n, 1), "objectness": torch.full((n,), 2.0)}
            else:
                pts = torch.tensor([[0.25, 0.5], [0.75, 0.5]])[: spec.num_points]
                res = {"points": pts.repeat(n, 1, 1)}
            out[tid] = (rows, res)
        return out


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_predictions_map_back_to_original_pixels(corpus, keep_aspect):
    records = read_csv_folder(corpus, task_table(TASKS))
    preds = predict(_Constant(), records, image_size=64, keep_aspect=keep_aspect, batch_size=5)
    assert [p.record for p in preds] == records
    for p in preds:
        H, W = p.height, p.width
        s = 64 / max(H, W)
        # network -> original: x = (u - ox) / sx, with ox = (64 - s W) / 2 when letterboxed
        to_x = (lambda u: (u * 64 - (64 - s * W) / 2) / s) if keep_aspect else (lambda u: u * W)
        to_y = (lambda v: (v * 64 - (64 - s * H) / 2) / s) if keep_aspect else (lambda v: v * H)
        kind = task_table(TASKS)[p.record.task_id].type
        if kind == "detection":
            expected = [max(to_x(0.25), 0), max(to_y(0.25), 0), min(to_x(0.75), W), min(to_y(0.75), H)]
            assert np.allclose(p.box, expected, atol=1e-4)
        elif kind == "regression":
            assert np.allclose(p.points, [[to_x(0.25), to_y(0.5)], [to_x(0.75), to_y(0.5)]], atol=1e-4)
        elif kind == "segmentation":
            assert p.mask.shape == (H, W)
            cols = np.arange(W) + 0.5
            margin = W / 64 + 1  # bilinear resampling blurs the edge by about one network pixel
            left, right = cols < to_x(0.5) - margin, cols > to_x(0.5) + margin
            assert (p.mask[:, left] == 1).all() and (p.mask[:, right] == 0).all()
        else:
            assert p.probs.argmax() == 1


def test_submission_files_for_a_partial_test_set(corpus, tmp_path):
    table = task_table(TASKS)
    records = [r for r in read_csv_folder(corpus, table) if r.task_id in ("breast_2cls", "fetal_head", "FUGC")]
    preds = predict(_Constant(), records, image_size=64)
    paths = write_submission(preds, table, tmp_path / "sub")
    cls = json.loads(paths["classification_predictions.json"].read_text())
    det = json.loads(paths["detection_predictions.json"].read_text())
    reg = json.loads(paths["regression_predictions.json"].read_text())
    assert det == [] and len(cls) == 8 and len(reg) == 8
    assert set(cls[0]) == {"image_path", "task_id", "predicted_class", "predicted_probs"} and cls[0]["predicted_class"] == 1
    assert set(reg[0]) == {"image_path", "task_id", "predicted_points_normalized", "predicted_points_pixels"}
    p0 = next(p for p in preds if p.record.task_id == "FUGC")
    r0 = next(r for r in reg if r["image_path"] == p0.record.image_path)
    assert np.allclose(np.array(r0["predicted_points_normalized"]) * [p0.width, p0.height], r0["predicted_points_pixels"])
    masks = sorted((tmp_path / "sub" / "masks" / "fetal_head").glob("*.png"))
    assert len(masks) == 8
    seg = next(p for p in preds if p.record.task_id == "fetal_head")
    saved = np.asarray(Image.open(tmp_path / "sub" / "masks" / "fetal_head" / seg.record.image.name))
    assert saved.shape == (seg.height, seg.width) and (saved == seg.mask).all()
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {*SUBMISSION_FILES, "masks"}


def test_evaluation_table_and_grids(corpus, tmp_path):
    table = task_table(TASKS)
    records = read_csv_folder(corpus, table)
    preds = predict(_Constant(), records, image_size=64)
    per_task = evaluate(preds, table)
    assert set(per_task) == set(TASKS)
    # the constant answer "class 1" gives accuracy = share of class-1 labels
    labels = [r.label for r in records if r.task_id == "breast_2cls"]
    assert per_task["breast_2cls"]["accuracy"] == pytest.approx(np.mean(np.array(labels) == 1))
    md = results_markdown(per_task, table)
    assert "| **mean** | segmentation |" in md and "mre" in md
    written = save_prediction_grids(preds, table, tmp_path / "grids")
    assert len(written) == 4 and all(p.stat().st_size > 0 for p in written)


def test_unknown_task_for_the_model(corpus):
    records = read_csv_folder(corpus, task_table(TASKS))
    model = _Constant()
    model.task_ids = [t for t in model.task_ids if t != "FUGC"]
    with pytest.raises(DataError, match="FUGC are not heads of this model"):
        predict(model, records, image_size=64)


def test_commands_evaluate_and_submit(corpus, tmp_path):
    from foundation.modalities.ultrasound.commands import main
    from foundation.modalities.ultrasound.model import UltrasoundMTL
    from tests.modalities.ultrasound._helpers import model_config

    UltrasoundMTL(model_config()).save_pretrained(tmp_path / "export")
    assert main(["evaluate", "--model", str(tmp_path / "export"), "--data-root", str(corpus),
                 "--out", str(tmp_path / "eval"), "--image-size", "64"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["per_task"]) == set(TASKS) and set(metrics["per_type"]) == {
        "segmentation", "classification", "detection", "regression"}
    assert (tmp_path / "eval" / "predictions_detection.png").is_file()
    assert main(["submit", "--model", str(tmp_path / "export"), "--data-root", str(corpus),
                 "--out", str(tmp_path / "sub"), "--image-size", "64"]) == 0
    assert len(json.loads((tmp_path / "sub" / "detection_predictions.json").read_text())) == 8
