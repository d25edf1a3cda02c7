"""Reading and validating the challenge's CSV files, and writing them back.

Layout (one or more ``*.csv`` files in a folder; paths are relative to that folder).
Every row has ``image_path``, ``task_id``, ``task_name``, ``num_classes`` plus, by type:

- segmentation: ``mask_path`` (PNG, pixel value = class index);
- classification: ``mask`` holding the integer label;
- detection: ``x_min, y_min, x_max, y_max`` in original pixels (all four empty: a negative, no object);
- regression: ``point_1_xy`` ... ``point_N_xy``, JSON strings ``"[x, y]"`` in original pixels.

An optional ``patient_id`` (or ``case_id``) column groups rows for patient-disjoint splits.
Every problem raises :class:`~foundation.errors.DataError` naming the file and row
(1-based, the header being row 1); no row is skipped.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from foundation.errors import DataError, did_you_mean
from foundation.modalities.ultrasound.tasks import TaskSpec

__all__ = ["Record", "read_csv", "read_csv_folder", "write_csv", "BOX_COLUMNS"]

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
_BASE = ("image_path", "task_id", "task_name", "num_classes")


@dataclass(frozen=True)
class Record:
    """One labelled (or, for a test CSV, unlabelled) image.

    Attributes:
        image: absolute image path.
        image_path: the path as written in the CSV (relative), used in submissions.
        task_id: the task.
        label: class index (classification), else -1.
        mask: absolute mask path (segmentation), else None.
        mask_path: the mask path as written in the CSV.
        box: ``(x_min, y_min, x_max, y_max)`` in original pixels, None for a negative or another type.
        points: ``((x, y), ...)`` in original pixels (regression), else ().
        group: patient / case id when the CSV has one, else the image path.
        source: ``"file.csv:row"`` for messages.
    """

    image: Path
    image_path: str
    task_id: str
    label: int = -1
    mask: Path | None = None
    mask_path: str = ""
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    group: str = ""
    source: str = ""


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: column {column} = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: column {column} = {text!r} is not finite")
    return value


def _point(text: str, where: str, column: str) -> tuple[float, float]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        value = None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise DataError(f"{where}: column {column} = {text!r} is not a point; expected a JSON string '[x, y]' "
                        "in original pixels")
    return float(value[0]), float(value[1])


def _row_record(row: Mapping[str, str], spec: TaskSpec, folder: Path, where: str, labelled: bool,
                check_files: bool) -> Record:
    image_path = (row.get("image_path") or "").strip()
    if not image_path:
        raise DataError(f"{where}: empty image_path")
    image = (folder / image_path).resolve()
    if check_files and not image.is_file():
        raise DataError(f"{where}: image {image_path!r} not found (looked for {image}); paths are relative to the "
                        "CSV folder")
    n_csv = (row.get("num_classes") or "").strip()
    if n_csv and spec.type in ("segmentation", "classification"):
        if not n_csv.isdigit() or int(n_csv) != spec.num_classes:
            raise DataError(f"{where}: num_classes = {n_csv!r} but task {spec.task_id!r} has {spec.num_classes} "
                            "classes; fix the CSV or declare the task with the right count in extra_tasks")
    group = (row.get("patient_id") or row.get("case_id") or "").strip() or image_path
    common = dict(image=image, image_path=image_path, task_id=spec.task_id, group=group, source=where)
    if not labelled:
        return Record(**common)
    if spec.type == "classification":
        text = (row.get("mask") or "").strip()
        if not text.lstrip("-").isdigit():
            raise DataError(f"{where}: column mask = {text!r} is not an integer class label")
        label = int(text)
        if not 0 <= label < spec.num_classes:
            raise DataError(f"{where}: class index {label} out of range [0, {spec.num_classes - 1}] for task "
                            f"{spec.task_id!r}")
        return Record(**common, label=label)
    if spec.type == "segmentation":
        mask_path = (row.get("mask_path") or "").strip()
        if not mask_path:
            raise DataError(f"{where}: segmentation row without mask_path")
        mask = (folder / mask_path).resolve()
        if check_files and not mask.is_file():
            raise DataError(f"{where}: mask {mask_path!r} not found (looked for {mask})")
        return Record(**common, mask=mask, mask_path=mask_path)
    if spec.type == "detection":
        texts = [(row.get(c) or "").strip() for c in BOX_COLUMNS]
        if not any(texts):
            return Record(**common)  # a negative: no object in the image
        if not all(texts):
            raise DataError(f"{where}: box columns {', '.join(BOX_COLUMNS)} are partly empty ({texts}); give all "
                            "four or none (none = no object)")
        box = tuple(_number(t, where, c) for t, c in zip(texts, BOX_COLUMNS))
        if box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
            raise DataError(f"{where}: box {box} is not x_min < x_max, y_min < y_max with non-negative pixels")
        return Record(**common, box=box)  # type: ignore[arg-type]
    points = []
    for k in range(1, spec.num_points + 1):
        column = f"point_{k}_xy"
        if column not in row:
            raise DataError(f"{where}: task {spec.task_id!r} has {spec.num_points} points but column {column} is missing")
        points.append(_point(row[column], where, column))
    return Record(**common, points=tuple(points))


def read_csv(path: str | Path, tasks: Mapping[str, TaskSpec], *, labelled: bool = True,
             check_files: bool = True, strict_tasks: bool = True) -> list[Record]:
    """Read and validate one challenge CSV.

    Args:
        path: the CSV file.
        tasks: known tasks (see :func:`~foundation.modalities.ultrasound.tasks.task_table`).
        labelled: rows carry labels (False for a test CSV).
        check_files: check that images and masks exist.
        strict_tasks: an unknown task id raises (False: rows of tasks outside ``tasks`` are left out,
            for a run over a subset of tasks; the caller asked for it by choosing the subset).

    Returns:
        The rows as :class:`Record`, in file order.

    Raises:
        DataError: missing columns, unknown task id, bad label, missing file, malformed box or point.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in _BASE if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the challenge CSVs have "
                                f"{', '.join(_BASE)} plus the task type's label columns")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the CSV ({err})") from err
    out = []
    for i, row in enumerate(rows, start=2):
        where = f"{path}:{i}"
        task_id = (row.get("task_id") or "").strip()
        if task_id not in tasks:
            from foundation.modalities.ultrasound.tasks import task_table

            if strict_tasks or task_id not in task_table():
                raise DataError(f"{where}: unknown task_id {task_id!r}; {did_you_mean(task_id, tasks)} "
                                "(declare new tasks in the recipe's extra_tasks)")
            continue
        out.append(_row_record(row, tasks[task_id], path.parent, where, labelled, check_files))
    return out


def read_csv_folder(folder: str | Path, tasks: Mapping[str, TaskSpec], **kwargs: bool) -> list[Record]:
    """Read every ``*.csv`` of ``folder`` (sorted by name) with :func:`read_csv`.

    Raises:
        DataError: the folder has no CSV file, or any row is invalid.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise DataError(f"{folder}: no *.csv files; point data_root at the challenge's csv_files folder")
    out: list[Record] = []
    for f in files:
        out.extend(read_csv(f, tasks, **kwargs))
    return out


def write_csv(path: str | Path, records: list[Record], tasks: Mapping[str, TaskSpec]) -> Path:
    """Write records in the challenge layout (paths as stored in ``image_path`` / ``mask_path``).

    The file is written to a temporary name and renamed, so a crash leaves no half CSV.
    """
    path = Path(path)
    n_points = max([tasks[r.task_id].num_points for r in records] + [0])
    columns = [*_BASE, "mask_path", "mask", *BOX_COLUMNS, *[f"point_{k}_xy" for k in range(1, n_points + 1)],
               "patient_id"]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for r in records:
            spec = tasks[r.task_id]
            row: dict[str, object] = {"image_path": r.image_path, "task_id": r.task_id, "task_name": r.task_id,
                                      "num_classes": spec.num_classes, "patient_id": r.group}
            if spec.type == "classification":
                row["mask"] = r.label
            elif spec.type == "segmentation":
                row["mask_path"] = r.mask_path
            elif spec.type == "detection" and r.box is not None:
                row.update(zip(BOX_COLUMNS, r.box))
            for k, (x, y) in enumerate(r.points, start=1):
                row[f"point_{k}_xy"] = json.dumps([x, y])
            writer.writerow(row)
    tmp.replace(path)
    return path
