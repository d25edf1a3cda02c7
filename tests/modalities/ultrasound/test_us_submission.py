"""Predictions mapped back to original pixels, the submission in the layout the official evaluator reads,
partial test sets, and the evaluate / submit commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from foundation.errors import DataError
from foundation.modalities.ultrasound.csv_reader import read_csv_folder
from foundation.modalities.ultrasound.evaluate import (
    evaluate,
    results_markdown,
    save_prediction_grids,
)
from foundation.modalities.ultrasound.predict import predict
from foundation.modalities.ultrasound.submission import (
    SUBMISSION_FILES,
    mask_target,
    write_submission,
)
from foundation.modalities.ultrasound.tasks import task_table
from tests.modalities.ultrasound._helpers import TASKS


class _Constant(torch.nn.Module):
    """Answers in network space with known constants: box [.25,.25,.75,.75], points (.25,.5)/(.75,.5),
    class 1 on the left half of the mask, class probabilities favouring class 1; ``objectness`` is the
    detection logit (negative: "no object", the box is still the best box)."""

    def __init__(self, objectness: float = 2.0) -> None:
        super().__init__()
        self.objectness = objectness
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
                res = {"box": torch.tensor([[0.25, 0.25, 0.75, 0.75]]).repeat(n, 1), "objectness": torch.full((n,), self.objectness)}
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
    # flat [x1, y1, x2, y2] as in the challenge README
    assert r0["predicted_points_pixels"] == pytest.approx(p0.points.reshape(-1).tolist())
    assert np.allclose(np.array(r0["predicted_points_normalized"]) * ([p0.width, p0.height] * 2),
                       r0["predicted_points_pixels"])
    # the demo corpus's mask_path is ../masks/<name>: stripped of '../' -> masks/<name> under the root
    assert len(paths["masks"]) == 8
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {*SUBMISSION_FILES, "masks"}


@pytest.mark.parametrize("mask_path,image_path,expected", [
    ("../masks/a.png", "", "masks/a.png"),
    ("../Segmentation/Two/ds/MASKS/mask_001.png", "", "Segmentation/Two/ds/MASKS/mask_001.png"),  # the README's
    ("../../x/../y.png", "", "x/y.png"),  # every '../' removed, as str.replace does
    ("", "../images/img_7.jpg", "images/img_7.png"),  # no mask_path: the image path, suffix .png
])
def test_mask_target_strips_every_parent_step(mask_path, image_path, expected):
    assert str(mask_target(mask_path, image_path)) == expected


@pytest.mark.parametrize("mask_path", ["/abs/m.png", "masks/.."])
def test_mask_target_refuses_paths_leaving_the_submission(mask_path):
    with pytest.raises(DataError, match="does not stay inside the submission"):
        mask_target(mask_path)


def test_every_row_of_the_corpus_lands_where_the_evaluator_reads(corpus, tmp_path):
    """For every CSV row: the mask at the stripped mask_path, grayscale, the predicted class values; every
    detection entry four finite numbers, also for images the model calls empty."""
    import csv

    table = task_table(TASKS)
    records = read_csv_folder(corpus, table, labelled=False)
    preds = predict(_Constant(objectness=-2.0), records, image_size=64)
    assert all(not p.found for p in preds if table[p.record.task_id].type == "detection")
    root = tmp_path / "sub"
    write_submission(preds, table, root)
    by_image = {(p.record.task_id, p.record.image_path): p for p in preds}
    rows = [row for f in sorted(corpus.glob("*.csv")) for row in csv.DictReader(f.open())]
    seg_rows = [row for row in rows if row["task_name"] == "segmentation"]
    assert len(seg_rows) == 16
    for row in seg_rows:
        written = root / row["mask_path"].replace("../", "")
        with Image.open(written) as im:
            assert im.mode == "L"
            saved = np.asarray(im)
        assert (saved == by_image[(row["task_id"], row["image_path"])].mask).all()
    det = json.loads((root / "detection_predictions.json").read_text())
    det_rows = [row for row in rows if row["task_name"] == "detection"]
    assert {(d["task_id"], d["image_path"]) for d in det} == {(r["task_id"], r["image_path"]) for r in det_rows}
    for d in det:
        assert len(d["bbox_pixels"]) == 4 and all(np.isfinite(d["bbox_pixels"]))
        assert len(d["bbox_normalized"]) == 4 and all(0 <= v <= 1 for v in d["bbox_normalized"])


def test_clashing_masks_refused_before_anything_is_written(corpus, tmp_path):
    from dataclasses import replace

    table = task_table(TASKS)
    records = [r for r in read_csv_folder(corpus, table) if r.task_id == "fetal_head"][:2]
    preds = predict(_Constant(), records, image_size=64)
    preds[1].record = replace(preds[1].record, mask_path=preds[0].record.mask_path)
    preds[0].mask = np.ones((preds[0].height, preds[0].width), np.int64)
    preds[1].mask = np.zeros((preds[1].height, preds[1].width), np.int64)
    with pytest.raises(DataError, match="writes a different mask"):
        write_submission(preds, table, tmp_path / "sub")
    assert not (tmp_path / "sub").exists()


def test_evaluation_table_and_grids(corpus, tmp_path):
    table = task_table(TASKS)
    records = read_csv_folder(corpus, table)
    preds = predict(_Constant(), records, image_size=64)
    results = {rules: evaluate(preds, table, rules) for rules in ("official", "strict")}
    assert set(results["official"]) == set(TASKS) == set(results["strict"])
    # the constant answer "class 1" gives accuracy = share of class-1 labels
    labels = [r.label for r in records if r.task_id == "breast_2cls"]
    assert results["official"]["breast_2cls"]["accuracy"] == pytest.approx(np.mean(np.array(labels) == 1))
    # detection: the official rules count the images with a true box only (7 of the 8 in the corpus)
    assert results["official"]["thyroid_nodule_det"]["n"] == 7 and results["strict"]["thyroid_nodule_det"]["n"] == 8
    md = results_markdown(results, table)
    assert "| thyroid_nodule_det | detection | official | 7 |" in md
    assert "| thyroid_nodule_det | detection | strict | 8 |" in md
    assert "| **mean of 2 tasks** | segmentation | official |" in md and "| **mean of 1 tasks** | regression | strict |" in md
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
    # --data-root: the csv_files folder itself here, the folder above it (the official layout) for submit
    assert main(["evaluate", "--model", str(tmp_path / "export"), "--data-root", str(corpus),
                 "--out", str(tmp_path / "eval"), "--image-size", "64", "--split", "all"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"official", "strict"}
    for rules in metrics.values():
        assert set(rules["per_task"]) == set(TASKS) and set(rules["per_type"]) == {
            "segmentation", "classification", "detection", "regression"}
    assert "| official |" in (tmp_path / "eval" / "results.md").read_text()
    assert (tmp_path / "eval" / "predictions_detection.png").is_file()
    assert main(["evaluate", "--model", str(tmp_path / "export"), "--data-root", str(corpus),
                 "--out", str(tmp_path / "eval1"), "--image-size", "64", "--rules", "official"]) == 0
    assert set(json.loads((tmp_path / "eval1" / "metrics.json").read_text())) == {"official"}
    assert main(["submit", "--model", str(tmp_path / "export"), "--data-root", str(corpus.parent),
                 "--out", str(tmp_path / "sub"), "--image-size", "64"]) == 0
    assert len(json.loads((tmp_path / "sub" / "detection_predictions.json").read_text())) == 8
    assert len(list((tmp_path / "sub" / "masks").glob("*.png"))) == 16
