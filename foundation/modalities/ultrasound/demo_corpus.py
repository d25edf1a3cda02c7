"""A generated demo corpus in the challenge layout, with known masks, boxes, keypoints and classes.

Images are speckle textures (a smooth echogenicity field times Rayleigh-distributed
speckle, the classic fully developed speckle model) blended, for some images, with a
crop of the real ultrasound frames that pydicom ships (``pydicom.examples.rgb_color``,
``ybr_color``). On top sit shapes whose labels are known exactly:

- segmentation: ``num_classes - 1`` ellipses, class k filled at its own echogenicity;
  one image in ten of a binary task has no structure (an empty mask);
- classification: flip-safe tasks encode the class in the size and brightness of an
  ellipse; the left/right tasks encode it in the angular position of the ellipse
  around the centre, so a horizontal flip changes the answer;
- detection: one bright ring (the box is its bounding box); one image in five is a
  negative without a ring;
- regression: N bright blobs at the keypoints, joined by a faint line.

Image sizes and aspect ratios vary; images are grayscale PNG except every fourth, RGB.
Two images share a patient id, so patient-disjoint splits have something to do.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from foundation.data.demo import make_once
from foundation.modalities.ultrasound.csv_reader import Record, write_csv
from foundation.modalities.ultrasound.tasks import TaskSpec

__all__ = ["make_demo_corpus", "speckle_background"]


def _dicom_frames() -> list[np.ndarray]:
    """Grayscale frames [H, W] in [0, 1] from pydicom's shipped ultrasound examples."""
    try:
        from pydicom import examples
    except ImportError as err:
        raise ImportError("the demo corpus uses pydicom's shipped ultrasound frames: pip install pydicom") from err
    frames = []
    for name in ("rgb_color", "ybr_color"):
        arr = np.asarray(getattr(examples, name).pixel_array, dtype=np.float32)  # [F?, H, W, 3]
        arr = arr.reshape(-1, *arr.shape[-3:])[:8].mean(axis=-1) / 255.0  # [F, H, W, 3] -> [F, H, W]
        frames.extend(list(arr))
    return frames


def speckle_background(h: int, w: int, rng: np.random.Generator, frame: np.ndarray | None = None) -> np.ndarray:
    """A speckled echogenicity field [H, W] in [0, 1], optionally blended with a real ultrasound frame."""
    coarse = rng.random((max(2, h // 16), max(2, w // 16)))
    yi = np.linspace(0, coarse.shape[0] - 1, h)
    xi = np.linspace(0, coarse.shape[1] - 1, w)
    field = _bilinear(coarse, yi, xi)
    base = 0.15 + 0.25 * field
    if frame is not None:
        y0 = rng.integers(0, max(1, frame.shape[0] - h // 2))
        x0 = rng.integers(0, max(1, frame.shape[1] - w // 2))
        crop = frame[y0:, x0:]
        yi = np.linspace(0, crop.shape[0] - 1, h)
        xi = np.linspace(0, crop.shape[1] - 1, w)
        base = 0.5 * base + 0.5 * _bilinear(crop, yi, xi)
    return base


def _bilinear(img: np.ndarray, yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
    y0 = np.floor(yi).astype(int).clip(0, img.shape[0] - 1)
    x0 = np.floor(xi).astype(int).clip(0, img.shape[1] - 1)
    y1, x1 = (y0 + 1).clip(max=img.shape[0] - 1), (x0 + 1).clip(max=img.shape[1] - 1)
    fy, fx = (yi - y0)[:, None], (xi - x0)[None, :]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _finish(echo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    speckle = rng.rayleigh(scale=1.0, size=echo.shape) / math.sqrt(math.pi / 2)  # mean 1
    return np.clip(echo * speckle, 0, 1)


def _sample(spec: TaskSpec, h: int, w: int, rng: np.random.Generator, echo: np.ndarray, i: int) -> dict:
    """Draw shapes on ``echo`` in place; return the labels."""
    out: dict = {}
    if spec.type == "segmentation":
        mask = np.zeros((h, w), np.uint8)
        if not (spec.num_classes == 2 and i % 10 == 9):
            for k in range(1, spec.num_classes):
                rx, ry = rng.uniform(0.08, 0.18) * w, rng.uniform(0.08, 0.18) * h
                cx = (k - 0.5) / (spec.num_classes - 1) * w + rng.uniform(-0.05, 0.05) * w
                cy = rng.uniform(0.3, 0.7) * h
                region = _ellipse(h, w, cx, cy, rx, ry)
                echo[region] = 0.25 + 0.7 * k / (spec.num_classes - 1)
                mask[region] = k
        out["mask"] = mask
    elif spec.type == "classification":
        label = int(rng.integers(spec.num_classes))
        frac = label / max(spec.num_classes - 1, 1)
        if spec.flip_safe:
            r = (0.08 + 0.2 * frac) * min(h, w)
            cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
            echo[_ellipse(h, w, cx, cy, r, r)] = 0.35 + 0.6 * frac
        else:
            angle = 2 * math.pi * label / spec.num_classes
            r = 0.1 * min(h, w)
            cx, cy = w / 2 + 0.3 * w * math.cos(angle), h / 2 + 0.3 * h * math.sin(angle)
            echo[_ellipse(h, w, cx, cy, r, r)] = 0.9
        out["label"] = label
    elif spec.type == "detection":
        if i % 5 != 4:
            rx, ry = rng.uniform(0.08, 0.25) * w, rng.uniform(0.08, 0.25) * h
            cx, cy = rng.uniform(rx + 1, w - rx - 1), rng.uniform(ry + 1, h - ry - 1)
            outer, inner = _ellipse(h, w, cx, cy, rx, ry), _ellipse(h, w, cx, cy, 0.7 * rx, 0.7 * ry)
            echo[outer & ~inner] = 0.95
            ys, xs = np.nonzero(outer)
            out["box"] = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    else:
        pts = []
        for _ in range(spec.num_points):
            px, py = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
            pts.append((round(px, 2), round(py, 2)))
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            for t in np.linspace(0, 1, 64):
                yy, xx = int(y0 + t * (y1 - y0)), int(x0 + t * (x1 - x0))
                echo[max(yy - 1, 0):yy + 1, max(xx - 1, 0):xx + 1] = 0.6
        for px, py in pts:
            echo[_ellipse(h, w, px, py, 3.0, 3.0)] = 1.0
        out["points"] = tuple(pts)
    return out


def make_demo_corpus(root: str | Path, tasks: Mapping[str, TaskSpec], images_per_task: int = 24,
                     seed: int = 0, min_size: int = 96, max_size: int = 160, dicom_backgrounds: bool = True) -> Path:
    """Write a demo corpus unless one with the same parameters is there: ``root/csv_files/<task>.csv`` plus
    ``root/images`` and ``root/masks``.

    The corpus is generated in a staging folder and moved into place (:func:`foundation.data.demo.make_once`).

    Args:
        root: output folder (replaced as a whole when its parameters differ).
        tasks: the tasks to cover.
        images_per_task: images per task.
        seed: seed of everything drawn.
        min_size: smallest image side in pixels.
        max_size: largest image side in pixels.
        dicom_backgrounds: blend every other image with a pydicom ultrasound frame (needs pydicom).

    Returns:
        The ``csv_files`` folder (pass it as ``data.source``).
    """
    params = {"tasks": {t: dataclasses.asdict(s) for t, s in tasks.items()}, "images_per_task": images_per_task,
              "seed": seed, "min_size": min_size, "max_size": max_size, "dicom_backgrounds": dicom_backgrounds,
              "version": 1}
    make_once(root, params, lambda stage: _write(stage, tasks, images_per_task, seed, min_size, max_size,
                                                 dicom_backgrounds))
    return Path(root) / "csv_files"


def _write(root: Path, tasks: Mapping[str, TaskSpec], images_per_task: int, seed: int, min_size: int, max_size: int,
           dicom_backgrounds: bool) -> None:
    from PIL import Image

    csv_dir = root / "csv_files"
    for sub in ("csv_files", "images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    frames = _dicom_frames() if dicom_backgrounds else []
    rng = np.random.default_rng(seed)
    for task_id, spec in tasks.items():
        records = []
        for i in range(images_per_task):
            h, w = int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1))
            frame = frames[int(rng.integers(len(frames)))] if frames and i % 2 == 0 else None
            echo = speckle_background(h, w, rng, frame)
            labels = _sample(spec, h, w, rng, echo, i)
            img = (_finish(echo, rng) * 255).round().astype(np.uint8)
            name = f"{task_id}_{i:04d}.png"
            if i % 4 == 3:
                tint = np.stack([img, (img * 0.9).astype(np.uint8), (img * 0.8).astype(np.uint8)], axis=-1)
                Image.fromarray(tint, "RGB").save(root / "images" / name)
            else:
                Image.fromarray(img, "L").save(root / "images" / name)
            mask_path = ""
            if "mask" in labels:
                mask_path = f"../masks/{name}"
                Image.fromarray(labels["mask"], "L").save(root / "masks" / name)
            records.append(Record(image=root / "images" / name, image_path=f"../images/{name}", task_id=task_id,
                                  label=labels.get("label", -1), mask_path=mask_path, box=labels.get("box"),
                                  points=labels.get("points", ()), group=f"{task_id}_p{i // 2:03d}"))
        write_csv(csv_dir / f"{task_id}.csv", records, tasks)
