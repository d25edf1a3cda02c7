"""Write the challenge submission in the layout the official evaluator reads.

Under the submission root (field names and nesting of the challenge README):

- ``classification_predictions.json``: ``[{image_path, task_id, predicted_class, predicted_probs}]``;
- ``detection_predictions.json``: ``[{image_path, task_id, bbox_normalized, bbox_pixels}]``, boxes as
  ``[x_min, y_min, x_max, y_max]`` (normalised by the original width / height), the best box for
  every image: the evaluator unpacks four numbers per entry and scores only images with a true box;
- ``regression_predictions.json``: ``[{image_path, task_id, predicted_points_normalized,
  predicted_points_pixels}]``, points flattened as ``[x1, y1, x2, y2, ...]``;
- masks: 8-bit grayscale PNG, pixel value = class index, at the original size, at the row's
  ``mask_path`` with every ``../`` removed (the evaluator joins exactly that to the submission
  root). A test row without ``mask_path`` gets its mask at its ``image_path`` stripped the same
  way, with the suffix ``.png`` (the baseline's fallback puts it elsewhere, but no evaluator reads
  it there either; a warning says so).

``image_path`` is written as in the CSV (the evaluator matches on it). Everything is checked before
anything is written; each file goes to a temporary name and is renamed once complete. Tasks absent
from the test set have no entries; the three JSON files are always written (possibly empty lists).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from foundation.atomic import atomic_path, atomic_write_json
from foundation.errors import DataError
from foundation.modalities.ultrasound.predict import Prediction
from foundation.modalities.ultrasound.tasks import TaskSpec

__all__ = ["SUBMISSION_FILES", "mask_target", "write_submission"]

SUBMISSION_FILES = ("classification_predictions.json", "detection_predictions.json", "regression_predictions.json")


def mask_target(mask_path: str, image_path: str = "") -> PurePosixPath:
    """Where the evaluator looks for a predicted mask, relative to the submission root.

    Args:
        mask_path: the CSV row's ``mask_path`` (may be empty for a test row).
        image_path: the row's ``image_path``, used when ``mask_path`` is empty.

    Returns:
        ``mask_path`` with every ``../`` removed (or ``image_path`` likewise, suffix ``.png``).

    Raises:
        DataError: the stripped path is absolute or still leaves the root (``..`` left over).
    """
    rel = (mask_path or image_path).replace("../", "")
    target = PurePosixPath(rel.replace("\\", "/"))
    if not mask_path:
        target = target.with_suffix(".png")
    if target.is_absolute() or ".." in target.parts or not target.parts:
        raise DataError(f"mask path {mask_path or image_path!r} does not stay inside the submission once '../' is "
                        "removed (the official evaluator joins it to the submission root); use a relative path")
    return target


def _finite(values: Sequence[float], where: str, what: str) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise DataError(f"{where}: the predicted {what} {out} is not finite; check the model's outputs")
    return out


def write_submission(predictions: Sequence[Prediction], table: Mapping[str, TaskSpec],
                     out_dir: str | Path) -> dict[str, Path | list[Path]]:
    """Write the submission files for ``predictions`` into ``out_dir``.

    Returns:
        ``{file name: path}`` of the three JSON files, plus ``"masks"``: the mask files written.

    Raises:
        DataError: a prediction lacks the output of its task type (it did not come from :func:`predict`),
            holds a non-finite number, or two rows would write different masks to one file.
    """
    from PIL import Image

    out = Path(out_dir)
    cls, det, reg = [], [], []
    masks: dict[PurePosixPath, tuple[np.ndarray, str]] = {}
    fallback = []
    for p in predictions:
        r = p.record
        kind, base = table[r.task_id].type, {"image_path": r.image_path, "task_id": r.task_id}
        W, H = p.width, p.height
        if kind == "classification":
            if p.probs is None:
                raise DataError(f"{r.source}: no class probabilities in the prediction")
            probs = _finite(p.probs, r.source, "probabilities")
            cls.append({**base, "predicted_class": int(np.argmax(p.probs)), "predicted_probs": probs})
        elif kind == "detection":
            if p.box is None:
                raise DataError(f"{r.source}: no box in the prediction; every detection entry needs one")
            box = _finite(p.box, r.source, "box")
            det.append({**base, "bbox_normalized": [box[0] / W, box[1] / H, box[2] / W, box[3] / H],
                        "bbox_pixels": box})
        elif kind == "regression":
            if p.points is None:
                raise DataError(f"{r.source}: no keypoints in the prediction")
            pts = np.asarray(_finite(np.asarray(p.points, dtype=float).reshape(-1), r.source, "keypoints"))
            reg.append({**base, "predicted_points_normalized": (pts.reshape(-1, 2) / [W, H]).reshape(-1).tolist(),
                        "predicted_points_pixels": pts.tolist()})
        else:
            if p.mask is None or p.mask.shape != (H, W):
                raise DataError(f"{r.source}: the predicted mask is missing or not at the original size {W}x{H}")
            if int(p.mask.min()) < 0 or int(p.mask.max()) > 255:
                raise DataError(f"{r.source}: mask values outside 0..255 cannot be written as an 8-bit PNG")
            target = mask_target(r.mask_path, r.image_path)
            if not r.mask_path:
                fallback.append(r.source)
            mask = p.mask.astype(np.uint8)
            if target in masks and not np.array_equal(masks[target][0], mask):
                raise DataError(f"{r.source}: its mask goes to {target}, where {masks[target][1]} writes a different "
                                "mask; give the rows distinct mask_path values")
            masks[target] = (mask, r.source)
    if fallback:
        warnings.warn(f"{len(fallback)} segmentation row(s) without mask_path (first: {fallback[0]}): their masks "
                      "are written at the stripped image_path with suffix .png; the official evaluator reads masks "
                      "only at mask_path", stacklevel=2)
    written = []
    for target, (mask, _) in masks.items():
        path = out.joinpath(*target.parts)
        with atomic_path(path) as tmp:
            Image.fromarray(mask, "L").save(tmp, format="PNG")
        written.append(path)
    paths: dict[str, Path | list[Path]] = {}
    for name, rows in zip(SUBMISSION_FILES, (cls, det, reg)):
        paths[name] = atomic_write_json(out / name, rows)
    paths["masks"] = written
    return paths
