"""Write the challenge submission: three JSON files plus masks at original size.

- ``classification_predictions.json``: ``[{image_path, task_id, predicted_class, predicted_probs}]``
- ``detection_predictions.json``: ``[{image_path, task_id, bbox_normalized, bbox_pixels}]``
  (boxes as ``[x_min, y_min, x_max, y_max]``; normalised by the original width / height;
  ``null`` for both when the model says there is no object)
- ``regression_predictions.json``: ``[{image_path, task_id, predicted_points_normalized,
  predicted_points_pixels}]`` (lists of ``[x, y]``)
- masks: PNG, pixel value = class index, at the original size, under ``mask_path`` of the test
  CSV row when it has one, else ``masks/<task_id>/<image name>.png``.

Files go to temporary names and are renamed once complete. Tasks absent from the test set
simply have no entries; the three JSON files are always written (possibly empty lists).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from foundation.errors import DataError
from foundation.modalities.ultrasound.predict import Prediction
from foundation.modalities.ultrasound.tasks import TaskSpec

__all__ = ["write_submission", "SUBMISSION_FILES"]

SUBMISSION_FILES = ("classification_predictions.json", "detection_predictions.json", "regression_predictions.json")


def _atomic_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _mask_target(out: Path, p: Prediction) -> Path:
    rel = p.record.mask_path or f"masks/{p.record.task_id}/{Path(p.record.image_path).stem}.png"
    target = (out / rel).resolve()
    if out.resolve() not in target.parents:
        target = out / "masks" / p.record.task_id / Path(rel).name
    return target


def write_submission(predictions: Sequence[Prediction], table: Mapping[str, TaskSpec], out_dir: str | Path) -> dict[str, Path]:
    """Write the submission files for ``predictions`` into ``out_dir``.

    Returns:
        ``{file name: path}`` of the JSON files written, plus ``"masks"`` -> the mask folder root.

    Raises:
        DataError: a prediction lacks the output of its task type (it did not come from :func:`predict`).
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cls, det, reg = [], [], []
    masks: list[tuple[Path, np.ndarray]] = []
    for p in predictions:
        kind, base = table[p.record.task_id].type, {"image_path": p.record.image_path, "task_id": p.record.task_id}
        W, H = p.width, p.height
        if kind == "classification":
            if p.probs is None:
                raise DataError(f"{p.record.source}: no class probabilities in the prediction")
            cls.append({**base, "predicted_class": int(np.argmax(p.probs)),
                        "predicted_probs": [float(v) for v in p.probs]})
        elif kind == "detection":
            box = None if p.box is None else [float(v) for v in p.box]
            det.append({**base, "bbox_normalized": None if box is None else
                        [box[0] / W, box[1] / H, box[2] / W, box[3] / H], "bbox_pixels": box})
        elif kind == "regression":
            if p.points is None:
                raise DataError(f"{p.record.source}: no keypoints in the prediction")
            pts = np.asarray(p.points, dtype=float)
            reg.append({**base, "predicted_points_normalized": (pts / [W, H]).tolist(),
                        "predicted_points_pixels": pts.tolist()})
        else:
            if p.mask is None or p.mask.shape != (H, W):
                raise DataError(f"{p.record.source}: the predicted mask is missing or not at the original size {W}x{H}")
            masks.append((_mask_target(out, p), p.mask))
    for target, mask in masks:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp.png")
        Image.fromarray(mask.astype(np.uint8), "L").save(tmp)
        tmp.replace(target)
    paths = {}
    for name, rows in zip(SUBMISSION_FILES, (cls, det, reg)):
        _atomic_json(out / name, rows)
        paths[name] = out / name
    paths["masks"] = out / "masks"
    return paths
