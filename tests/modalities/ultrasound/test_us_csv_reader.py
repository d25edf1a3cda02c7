"""CSV reading: round trip of the challenge layout and a DataError naming file and row for every bad row."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from foundation.errors import DataError
from foundation.modalities.ultrasound.csv_reader import read_csv, read_csv_folder, write_csv
from foundation.modalities.ultrasound.tasks import task_table
from tests.modalities.ultrasound._helpers import TASKS


def test_round_trip(corpus, tmp_path):
    table = task_table(TASKS)
    records = read_csv_folder(corpus, table)
    assert {r.task_id for r in records} == set(TASKS) and len(records) == 8 * len(TASKS)
    kinds = {table[r.task_id].type for r in records if r.box is not None}
    assert kinds == {"detection"}
    negatives = [r for r in records if r.task_id == "thyroid_nodule_det" and r.box is None]
    assert len(negatives) == 1  # one in five of the demo detection images has no object
    copy = corpus / "copy.csv.out"
    write_csv(copy, records, table)
    again = read_csv(copy, table)
    assert [(r.image, r.task_id, r.label, r.mask, r.box, r.points, r.group) for r in again] == \
        [(r.image, r.task_id, r.label, r.mask, r.box, r.points, r.group) for r in records]
    copy.unlink()


def _edit(corpus: Path, tmp_path: Path, name: str, column: str, value: str, row: int = 0) -> Path:
    """Copy one CSV of the corpus next to it with one cell changed; return the copy."""
    src = corpus / name
    with src.open() as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), reader.fieldnames
    rows[row][column] = value
    out = corpus / f"edited_{tmp_path.name}.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.mark.parametrize("name,column,value,match", [
    ("breast_2cls.csv", "task_id", "breast_2clz", r":2: unknown task_id 'breast_2clz'; did you mean 'breast_2cls'"),
    ("breast_2cls.csv", "mask", "2", r":2: class index 2 out of range \[0, 1\]"),
    ("breast_2cls.csv", "mask", "one", r":2: column mask = 'one' is not an integer"),
    ("breast_2cls.csv", "image_path", "../images/nope.png", r":2: image '../images/nope.png' not found"),
    ("fetal_head.csv", "mask_path", "../masks/nope.png", r":2: mask '../masks/nope.png' not found"),
    ("fetal_head.csv", "num_classes", "3", r":2: num_classes = '3' but task 'fetal_head' has 2"),
    ("FUGC.csv", "point_2_xy", "[3, ]", r":2: column point_2_xy = '\[3, \]' is not a point"),
    ("FUGC.csv", "point_1_xy", "[1, 2, 3]", r":2: column point_1_xy .* is not a point"),
    ("thyroid_nodule_det.csv", "x_max", "", r":2: box columns .* partly empty"),
    ("thyroid_nodule_det.csv", "x_max", "0.5", r":2: box .* is not x_min < x_max"),
])
def test_bad_rows_raise_with_file_and_row(corpus, tmp_path, name, column, value, match):
    edited = _edit(corpus, tmp_path, name, column, value)
    try:
        with pytest.raises(DataError, match=match) as info:
            read_csv(edited, task_table(TASKS))
        assert str(edited) in str(info.value)
    finally:
        edited.unlink()


def test_missing_columns_and_empty_folder(corpus, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image_path,task_id\nx.png,lung\n")
    with pytest.raises(DataError, match="missing column"):
        read_csv(bad, task_table(TASKS))
    with pytest.raises(DataError, match="no \\*.csv files"):
        read_csv_folder(tmp_path / "nothing", task_table(TASKS))


def test_unlabelled_test_csv(corpus, tmp_path):
    dest = tmp_path / "csv"
    shutil.copytree(corpus.parent, tmp_path / "c")
    records = read_csv(tmp_path / "c" / "csv_files" / "FUGC.csv", task_table(TASKS), labelled=False)
    assert all(r.points == () and r.label == -1 for r in records) and not dest.exists()
