"""Run a trained multi-task model over CSV records and map its outputs back to original pixels.

Works on any subset of the model's tasks (a test set with some tasks only): each record is
routed to its own task's head. Images are read from disk, fitted to the model input with
the same geometry as training (stretched or letterboxed), and predictions are mapped back
through the inverse of that geometry: masks at original size, boxes and keypoints in
original pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from foundation.errors import DataError
from foundation.modalities.ultrasound.augment import fit_geometry, unwarp, warp
from foundation.modalities.ultrasound.csv_reader import Record
from foundation.modalities.ultrasound.images import read_image

__all__ = ["Prediction", "predict"]


@dataclass
class Prediction:
    """The model's answer for one record, in original pixels.

    Attributes:
        record: the CSV record.
        height: original image height.
        width: original image width.
        probs: class probabilities ``[C]`` (classification).
        mask: label map ``[H, W]`` (segmentation).
        box: the best ``(x_min, y_min, x_max, y_max)`` (detection), also when the objectness says "no object":
            the official evaluator reads a box for every image and scores only those with a true object.
        objectness: probability that there is an object (detection).
        found: the objectness reached the threshold (detection; the strict rules score a box only then).
        points: keypoints ``[P, 2]`` (x, y) (regression).
    """

    record: Record
    height: int
    width: int
    probs: np.ndarray | None = None
    mask: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    objectness: float = float("nan")
    found: bool = False
    points: np.ndarray | None = None


@torch.no_grad()
def predict(model: torch.nn.Module, records: Sequence[Record], *, image_size: int, keep_aspect: bool = False,
            batch_size: int = 16, device: torch.device | str | None = None,
            objectness_threshold: float = 0.5) -> list[Prediction]:
    """Predict every record with its task's head.

    Args:
        model: an :class:`~foundation.modalities.ultrasound.model.UltrasoundMTL`.
        records: records of any of the model's tasks (labels are ignored).
        image_size: the model's input side S (as in training).
        keep_aspect: letterbox as in training.
        batch_size: images per forward pass.
        device: where to run (default: the model's device).
        objectness_threshold: detection: from this probability on, ``found`` is True (the box is always kept).

    Returns:
        One :class:`Prediction` per record, in order.

    Raises:
        DataError: a record's task is not one of the model's.
    """
    unknown = sorted({r.task_id for r in records} - set(model.task_ids))
    if unknown:
        raise DataError(f"task(s) {', '.join(unknown)} are not heads of this model (it has {len(model.task_ids)} "
                        "tasks); predict them with a model trained on them")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            images, geoms = [], []
            for r in chunk:
                img = torch.from_numpy(read_image(r.image)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
                g = fit_geometry(img.shape[1], img.shape[2], image_size, keep_aspect)
                images.append(warp(img, g))
                geoms.append(g)
            task = torch.tensor([model.task_ids.index(r.task_id) for r in chunk], device=device)
            results = model(torch.stack(images).to(device), task)
            preds = [Prediction(r, g.height, g.width) for r, g in zip(chunk, geoms)]
            for tid, (rows, res) in results.items():
                kind = model.table[tid].type
                for n, i in enumerate(rows.tolist()):
                    p, g = preds[i], geoms[i]
                    if kind == "classification":
                        p.probs = res[n].float().softmax(-1).cpu().numpy()
                    elif kind == "segmentation":
                        p.mask = unwarp(res[n].float().cpu(), g).argmax(0).numpy()  # [C, S, S] -> [H, W]
                    elif kind == "detection":
                        p.objectness = float(res["objectness"][n].float().sigmoid())
                        box = g.box_to_orig(res["box"][n].float().cpu() * image_size)
                        box = torch.stack([box[0].clamp(0, g.width), box[1].clamp(0, g.height),
                                           box[2].clamp(0, g.width), box[3].clamp(0, g.height)])
                        p.box = tuple(box.tolist())
                        p.found = p.objectness >= objectness_threshold
                    else:
                        p.points = g.to_orig(res["points"][n].float().cpu() * image_size).numpy()
            out.extend(preds)
    finally:
        model.train(was_training)
    return out

