"""The official and strict rule sets of ``evaluate`` on hand-made cases; expected values written from the rules."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foundation.errors import DataError
from foundation.modalities.ultrasound.csv_reader import Record
from foundation.modalities.ultrasound.evaluate import (
    evaluate,
    read_truth_mask,
    resize_nearest,
    results_markdown,
    summarize,
)
from foundation.modalities.ultrasound.predict import Prediction
from foundation.modalities.ultrasound.tasks import task_table

TABLE = task_table()


def _record(task_id: str, i: int, **kw) -> Record:
    return Record(image=Path(f"/nowhere/{task_id}_{i}.png"), image_path=f"../images/{task_id}_{i}.png",
                  task_id=task_id, source=f"{task_id}.csv:{i + 2}", **kw)


def _box(task_id: str, i: int, truth, pred, found: bool) -> Prediction:
    return Prediction(_record(task_id, i, box=truth), 20, 20, box=pred, found=found)


def _detections() -> list[Prediction]:
    return [
        _box("thyroid_nodule_det", 0, (0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 10.0, 10.0), True),  # hit: IoU 1
        _box("thyroid_nodule_det", 1, (0.0, 0.0, 10.0, 10.0), (5.0, 0.0, 15.0, 10.0), False),  # IoU 50 / 150
        _box("thyroid_nodule_det", 2, None, (0.0, 0.0, 4.0, 4.0), True),  # false alarm on a negative
        _box("thyroid_nodule_det", 3, None, (0.0, 0.0, 4.0, 4.0), False),  # negative called negative
        _box("uterine_fibroid_det", 0, None, (1.0, 1.0, 3.0, 3.0), False),  # a task of negatives only
    ]


def test_detection_negatives_under_each_rule_set():
    official = evaluate(_detections(), TABLE, "official")
    # official: images without a true box do not count; the miss still scores the IoU of its best box
    assert official["thyroid_nodule_det"] == {"iou": pytest.approx((1 + 1 / 3) / 2), "n": 2}
    assert official["uterine_fibroid_det"] == {"iou": 0.0, "n": 0}
    strict = evaluate(_detections(), TABLE, "strict")
    # strict: every image; a miss and a false alarm 0, a negative called negative 1
    assert strict["thyroid_nodule_det"] == {"iou": pytest.approx((1 + 0 + 0 + 1) / 4), "n": 4}
    assert strict["uterine_fibroid_det"] == {"iou": 1.0, "n": 1}
    # the per-type means: official over the tasks that counted an image, strict over both
    assert summarize(official, TABLE, "official")["detection"] == {"iou": pytest.approx(2 / 3), "tasks": 1}
    assert summarize(strict, TABLE, "strict")["detection"] == {"iou": pytest.approx((0.5 + 1) / 2), "tasks": 2}


def test_unknown_keypoint_under_each_rule_set():
    nan = float("nan")
    p = Prediction(_record("FUGC", 0, points=((3.0, 4.0), (nan, nan))), 20, 20,
                   points=np.array([[0.0, 0.0], [6.0, 8.0]]))
    # official: the unknown point is (0, 0): distances 5 and 10; strict: the known point only
    assert evaluate([p], TABLE, "official")["FUGC"]["mre"] == pytest.approx(7.5)
    assert evaluate([p], TABLE, "strict")["FUGC"]["mre"] == pytest.approx(5.0)


def _cls(task_id: str, labels, probs) -> list[Prediction]:
    return [Prediction(_record(task_id, i, label=y), 8, 8, probs=np.array(pr)) for i, (y, pr) in
            enumerate(zip(labels, probs))]


def test_auc_summaries_keep_official_zeros_and_skip_strict_nans():
    preds = (_cls("breast_2cls", [1, 1], [[0.3, 0.7], [0.6, 0.4]])  # one class in the truth: AUC undefined
             + _cls("lung_2cls", [0, 1], [[0.8, 0.2], [0.3, 0.7]]))  # perfectly ranked: AUC 1
    official, strict = evaluate(preds, TABLE, "official"), evaluate(preds, TABLE, "strict")
    assert official["breast_2cls"]["auc"] == 0.0 and math.isnan(strict["breast_2cls"]["auc"])
    assert summarize(official, TABLE, "official")["classification"]["auc"] == pytest.approx(0.5)
    assert summarize(strict, TABLE, "strict")["classification"]["auc"] == pytest.approx(1.0)
    md = results_markdown({"official": official, "strict": strict}, TABLE)
    assert "| breast_2cls | classification | official | 2 | accuracy 0.5000, auc 0.0000," in md
    assert "| breast_2cls | classification | strict | 2 | accuracy 0.5000, auc nan," in md


def test_resize_nearest_follows_opencv_rule():
    # src index = floor(dst index * src / dst)
    assert resize_nearest(np.array([[1, 2, 3]]), (1, 2)).tolist() == [[1, 2]]
    assert resize_nearest(np.array([[1, 2], [3, 4]]), (2, 5)).tolist() == [[1, 1, 1, 2, 2], [3, 3, 3, 4, 4]]
    assert resize_nearest(np.array([[1, 2], [3, 4]]), (3, 1)).tolist() == [[1], [1], [3]]


def _save(path: Path, arr: np.ndarray, mode: str) -> Path:
    Image.fromarray(arr.astype(np.uint8), mode).save(path)
    return path


def test_mask_of_another_size_official_resizes_strict_refuses(tmp_path):
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 1
    path = _save(tmp_path / "m.png", gt, "L")
    pred = Prediction(_record("fetal_head", 0, mask=path, mask_path="../m.png"), 2, 2, mask=np.array([[1, 0], [1, 0]]))
    assert evaluate([pred], TABLE, "official")["fetal_head"] == {"dice": 1.0, "hd": 0.0, "n": 1}
    with pytest.raises(DataError, match=r"fetal_head.csv:2: the mask is 4x4 but the image 2x2; the strict rules"):
        evaluate([pred], TABLE, "strict")


def test_rgb_masks_with_equal_channels_read_with_one_warning(tmp_path):
    gt = np.zeros((4, 4), np.uint8)
    gt[1:3, 1:3] = 1
    preds = []
    for i in range(2):
        path = _save(tmp_path / f"m{i}.png", np.stack([gt] * 3, -1), "RGB")
        preds.append(Prediction(_record("fetal_head", i, mask=path), 4, 4, mask=gt.astype(np.int64)))
    with pytest.warns(UserWarning, match="2 ground-truth mask.*RGB mask with three equal channels"):
        result = evaluate(preds, TABLE, "official")
    assert result["fetal_head"] == {"dice": 1.0, "hd": 0.0, "n": 2}


def test_ambiguous_masks_raise(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[1, 1] = (255, 0, 0)
    with pytest.raises(DataError, match="colour mask .* save the mask as 8-bit grayscale"):
        read_truth_mask(_save(tmp_path / "c.png", colour, "RGB"), 2)
    Image.fromarray(np.ones((4, 4), np.uint16)).save(tmp_path / "w.png")  # mode I;16
    with pytest.raises(DataError, match="16-bit and 1-bit masks change value"):
        read_truth_mask(tmp_path / "w.png", 2)
    with pytest.raises(DataError, match=r"mask value 2 outside \[0, 1\]"):
        read_truth_mask(_save(tmp_path / "v.png", np.full((4, 4), 2), "L"), 2)


def test_unknown_rule_set():
    with pytest.raises(ValueError, match="rules must be one of official, strict"):
        evaluate(_detections(), TABLE, "loose")
