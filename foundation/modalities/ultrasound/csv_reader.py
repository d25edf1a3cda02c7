"""Reading and validating the challenge's CSV files, and writing them back in the official layout.

Layout (one or more ``*.csv`` files in a ``csv_files`` folder; paths are relative to that folder).
Every row has ``image_path``, ``task_id``, ``task_name``, ``num_classes`` plus, by type:

- segmentation (``task_name`` ``segmentation``, ``num_classes`` counting the background):
  ``mask_path`` (PNG, pixel value = class index);
- classification (``classification``): ``mask`` holding the integer label;
- detection (``detection``): ``x_min, y_min, x_max, y_max`` in original pixels (all four empty: a
  negative, no object);
- regression (``Regression``, capital R as in the official files; ``num_classes`` = number of
  keypoints): ``point_1_xy`` ... ``point_N_xy``, JSON strings ``"[x, y]"`` in original pixels.

An optional ``patient_id`` (or ``case_id``) column groups rows for patient-disjoint splits.

What the official evaluator also accepts, where the meaning is unambiguous, is read with a
``warnings.warn`` saying what was accepted (one warning per file and kind, naming the rows): a UTF-8
byte-order mark; labels or ``num_classes`` written as floats with an integer value (``1.0``, what
pandas writes after a merge); ``task_name`` written as the task id or in another letter case (older
files of this suite); with ``missing_points="unknown"``, a missing or empty ``point_k_xy`` (the
point is read as unknown, NaN; the official evaluator scores it against (0, 0)). Everything else
raises :class:`~foundation.errors.DataError` naming the file and row (1-based, the header being
row 1); no row is skipped.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from foundation.atomic import atomic_path
from foundation.errors import DataError, did_you_mean
from foundation.modalities.ultrasound.tasks import TaskSpec

__all__ = ["BOX_COLUMNS", "OFFICIAL_TASK_NAMES", "Record", "csv_folder", "read_csv", "read_csv_folder", "write_csv"]

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
OFFICIAL_TASK_NAMES = {"segmentation": "segmentation", "classification": "classification",
                       "detection": "detection", "regression": "Regression"}
_BASE = ("image_path", "task_id", "task_name", "num_classes")
_BOM = b"\xef\xbb\xbf"
NAN_POINT = (float("nan"), float("nan"))


@dataclass(frozen=True)
class Record:
    """One labelled (or, for a test CSV, unlabelled) image.

    Attributes:
        image: absolute image path.
        image_path: the path as written in the CSV (relative), used in submissions.
        task_id: the task.
        label: class index (classification), else -1.
        mask: absolute mask path (segmentation, labelled), else None.
        mask_path: the mask path as written in the CSV (also kept for unlabelled rows: the
            submission writes the predicted mask there).
        box: ``(x_min, y_min, x_max, y_max)`` in original pixels, None for a negative or another type.
        points: ``((x, y), ...)`` in original pixels (regression), else (); an unknown point is (nan, nan).
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


class _Lenient:
    """Rows read leniently, per kind, for one warning per file and kind (with the first example)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, tuple[str, list[int]]] = {}
        self.bom = False

    def note(self, kind: str, row: int, example: str = "") -> None:
        self.rows.setdefault(kind, (example, []))[1].append(row)

    def emit(self) -> None:
        if self.bom:
            warnings.warn(f"{self.path}: UTF-8 byte-order mark at the start of the file skipped", stacklevel=3)
        for kind, (example, rows) in self.rows.items():
            shown = ", ".join(str(r) for r in rows[:8]) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
            warnings.warn(f"{self.path}: row(s) {shown}: {kind}{f' (first: {example})' if example else ''}",
                          stacklevel=3)


def _integer(text: str, where: str, column: str, lenient: _Lenient, row: int) -> int:
    """An integer cell; ``"1.0"`` is accepted (noted for a warning), ``"1.5"`` or ``"one"`` raise."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value != int(value):
        raise DataError(f"{where}: column {column} = {text!r} is not an integer; write a whole number")
    lenient.note(f"column {column} written as a float with an integer value, read as that integer", row,
                 f"{text!r} -> {int(value)}")
    return int(value)


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


def _check_header(row: Mapping[str, str], spec: TaskSpec, where: str, lenient: _Lenient, i: int) -> None:
    """``task_name`` and ``num_classes`` against the task table."""
    name = (row.get("task_name") or "").strip()
    official = OFFICIAL_TASK_NAMES[spec.type]
    if name != official:
        if name.lower() == spec.type or name == spec.task_id:
            lenient.note(f"task_name {name!r} accepted for the {spec.type} task {spec.task_id!r}; the official "
                         f"evaluator dispatches on task_name and expects {official!r} (rewrite with write_csv)", i)
        else:
            raise DataError(f"{where}: task_name = {name!r} but task {spec.task_id!r} is a {spec.type} task; "
                            f"write {official!r} (the official evaluator dispatches on task_name)")
    text = (row.get("num_classes") or "").strip()
    if not text or spec.type == "detection":
        return
    n = _integer(text, where, "num_classes", lenient, i)
    expected = spec.num_points if spec.type == "regression" else spec.num_classes
    if spec.type == "regression" and n == 0:
        lenient.note(f"num_classes 0 accepted for the regression task {spec.task_id!r} (older files of this "
                     f"suite); the official files hold the number of points, {expected}", i)
    elif n != expected:
        what = "points" if spec.type == "regression" else "classes"
        raise DataError(f"{where}: num_classes = {text!r} but task {spec.task_id!r} has {expected} {what}; fix the "
                        "CSV or declare the task with the right count in extra_tasks")


def _resolve(folder: Path, rel: str, where: str, column: str) -> Path:
    """``folder / rel`` resolved; a path the OS cannot even look up (too long, NUL byte) is a DataError naming the row."""
    try:
        path = (folder / rel).resolve()
        path.is_file()  # raises for names the file system refuses (ENAMETOOLONG)
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: {column} {rel[:80]!r}{'...' if len(rel) > 80 else ''} is not a usable path "
                        f"({type(err).__name__}: {err}); fix the CSV") from err
    return path


def _row_record(row: Mapping[str, str], spec: TaskSpec, folder: Path, where: str, i: int, labelled: bool,
                check_files: bool, missing_points: str, lenient: _Lenient) -> Record:
    image_path = (row.get("image_path") or "").strip()
    if not image_path:
        raise DataError(f"{where}: empty image_path")
    image = _resolve(folder, image_path, where, "image_path")
    if check_files and not image.is_file():
        raise DataError(f"{where}: image {image_path!r} not found (looked for {image}); paths are relative to the "
                        "CSV folder")
    _check_header(row, spec, where, lenient, i)
    group = (row.get("patient_id") or row.get("case_id") or "").strip() or image_path
    common = dict(image=image, image_path=image_path, task_id=spec.task_id, group=group, source=where)
    mask_path = (row.get("mask_path") or "").strip() if spec.type == "segmentation" else ""
    if not labelled:
        return Record(**common, mask_path=mask_path)
    if spec.type == "classification":
        label = _integer((row.get("mask") or "").strip(), where, "mask", lenient, i)
        if not 0 <= label < spec.num_classes:
            raise DataError(f"{where}: class index {label} out of range [0, {spec.num_classes - 1}] for task "
                            f"{spec.task_id!r}")
        return Record(**common, label=label)
    if spec.type == "segmentation":
        if not mask_path:
            raise DataError(f"{where}: segmentation row without mask_path")
        mask = _resolve(folder, mask_path, where, "mask_path")
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
        text = (row.get(column) or "").strip()
        if text:
            points.append(_point(text, where, column))
        elif missing_points == "unknown":
            lenient.note(f"{column} missing or empty: the point is read as unknown (NaN); the official evaluator "
                         "scores it against (0, 0), evaluate --rules strict leaves it out", i)
            points.append(NAN_POINT)
        else:
            state = "is missing" if column not in row else "is empty"
            raise DataError(f"{where}: task {spec.task_id!r} has {spec.num_points} points but column {column} "
                            f"{state}; add the point, or read with missing_points='unknown' to evaluate (an "
                            "unknown point cannot be trained on)")
    return Record(**common, points=tuple(points))


def csv_folder(data_root: str | Path) -> Path:
    """The folder of the CSVs: ``data_root`` itself, or its ``csv_files`` (the official ``--data-root``).

    Raises:
        DataError: neither holds a ``*.csv`` file.
    """
    root = Path(data_root)
    for folder in (root, root / "csv_files"):
        if folder.is_dir() and any(folder.glob("*.csv")):
            return folder
    raise DataError(f"{root}: no *.csv files there nor in {root / 'csv_files'}; point data_root at the challenge's "
                    "csv_files folder or the folder above it")


def read_csv(path: str | Path, tasks: Mapping[str, TaskSpec], *, labelled: bool = True,
             check_files: bool = True, strict_tasks: bool = True, missing_points: str = "error") -> list[Record]:
    """Read and validate one challenge CSV.

    Args:
        path: the CSV file.
        tasks: known tasks (see :func:`~foundation.modalities.ultrasound.tasks.task_table`).
        labelled: rows carry labels (False for a test CSV).
        check_files: check that images and masks exist.
        strict_tasks: an unknown task id raises (False: rows of tasks outside ``tasks`` are left out,
            for a run over a subset of tasks; the caller asked for it by choosing the subset).
        missing_points: ``error`` (a missing or empty ``point_k_xy`` raises: training needs every
            point) or ``unknown`` (read as NaN with a warning, for evaluation).

    Returns:
        The rows as :class:`Record`, in file order.

    Raises:
        DataError: missing columns, unknown task id, bad label, missing file, malformed box or point.
    """
    if missing_points not in ("error", "unknown"):
        raise ValueError(f"missing_points must be 'error' or 'unknown', got {missing_points!r}")
    path = Path(path)
    lenient = _Lenient(path)
    try:
        if path.read_bytes()[:3] == _BOM:
            lenient.bom = True
        with path.open(newline="", encoding="utf-8-sig") as fh:
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
        out.append(_row_record(row, tasks[task_id], path.parent, where, i, labelled, check_files, missing_points,
                               lenient))
    lenient.emit()
    return out


def read_csv_folder(folder: str | Path, tasks: Mapping[str, TaskSpec], **kwargs: bool | str) -> list[Record]:
    """Read every ``*.csv`` of the CSV folder (sorted by name) with :func:`read_csv`.

    Args:
        folder: the ``csv_files`` folder or the folder above it (see :func:`csv_folder`).
        tasks: known tasks.
        **kwargs: passed to :func:`read_csv`.

    Raises:
        DataError: no CSV file found, or any row is invalid.
    """
    out: list[Record] = []
    for f in sorted(csv_folder(folder).glob("*.csv")):
        out.extend(read_csv(f, tasks, **kwargs))
    return out


def write_csv(path: str | Path, records: list[Record], tasks: Mapping[str, TaskSpec]) -> Path:
    """Write records in the official layout (paths as stored in ``image_path`` / ``mask_path``).

    Columns: ``image_path, task_id, task_name, num_classes``, then the label columns of the task
    types present (``mask_path``; ``mask``; the box; ``point_1_xy`` ...), then ``patient_id``.
    ``task_name`` is the official type name and ``num_classes`` counts the points of a regression
    task. Unknown points are written as empty cells. The file is written to a temporary name and
    renamed, so a crash leaves no half CSV.

    Returns:
        ``path``.
    """
    path = Path(path)
    kinds = {tasks[r.task_id].type for r in records}
    n_points = max([tasks[r.task_id].num_points for r in records] + [0])
    columns = [*_BASE, *(["mask_path"] if "segmentation" in kinds else []),
               *(["mask"] if "classification" in kinds else []), *(BOX_COLUMNS if "detection" in kinds else ()),
               *[f"point_{k}_xy" for k in range(1, n_points + 1)], "patient_id"]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for r in records:
            spec = tasks[r.task_id]
            count = spec.num_points if spec.type == "regression" else spec.num_classes
            row: dict[str, object] = {"image_path": r.image_path, "task_id": r.task_id,
                                      "task_name": OFFICIAL_TASK_NAMES[spec.type], "num_classes": count,
                                      "patient_id": r.group}
            if spec.type == "classification":
                row["mask"] = r.label
            elif spec.type == "segmentation":
                row["mask_path"] = r.mask_path
            elif spec.type == "detection" and r.box is not None:
                row.update((c, repr(float(v))) for c, v in zip(BOX_COLUMNS, r.box))
            for k, (x, y) in enumerate(r.points, start=1):
                row[f"point_{k}_xy"] = "" if math.isnan(x) else json.dumps([x, y])
            writer.writerow(row)
    return path
