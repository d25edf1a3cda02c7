"""CSV reading: round trip of the official layout, lenient reads with a warning, and a DataError naming file
and row for every bad or ambiguous row."""
from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path

import pytest

from foundation.errors import DataError
from foundation.modalities.ultrasound.csv_reader import (
    csv_folder,
    read_csv,
    read_csv_folder,
    write_csv,
)
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
    ("breast_2cls.csv", "image_path", "x" * 300 + ".png", r":2: image_path 'x{80}'\.\.\. is not a usable path"),
    ("fetal_head.csv", "mask_path", "m" * 300 + ".png", r":2: mask_path 'm{80}'\.\.\. is not a usable path"),
    # ambiguous values: read neither leniently nor as something else
    ("breast_2cls.csv", "mask", "1.5", r":2: column mask = '1.5' is not an integer"),
    ("breast_2cls.csv", "num_classes", "2.5", r":2: column num_classes = '2.5' is not an integer"),
    ("breast_2cls.csv", "task_name", "segmentation",
     r":2: task_name = 'segmentation' but task 'breast_2cls' is a classification task; write 'classification'"),
    ("FUGC.csv", "num_classes", "3", r":2: num_classes = '3' but task 'FUGC' has 2 points"),
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


def test_write_csv_official_columns_and_values(corpus):
    with (corpus / "FUGC.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # regression: the official task_name is 'Regression' and num_classes holds the number of points
    assert {(r["task_name"], r["num_classes"]) for r in rows} == {("Regression", "2")}
    assert set(rows[0]) == {"image_path", "task_id", "task_name", "num_classes", "point_1_xy", "point_2_xy",
                            "patient_id"}
    expected = {"breast_2cls.csv": ("classification", "2", "mask"), "cardiac_multi.csv": ("segmentation", "4", "mask_path"),
                "thyroid_nodule_det.csv": ("detection", "1", "x_min")}
    for name, (task_name, count, column) in expected.items():
        with (corpus / name).open(newline="") as fh:
            first = next(csv.DictReader(fh))
        assert (first["task_name"], first["num_classes"]) == (task_name, count) and column in first


def test_round_trip_is_byte_identical(corpus, tmp_path):
    """The demo corpus is written by write_csv: read -> write gives the same bytes, file by file."""
    table = task_table(TASKS)
    for path in sorted(corpus.glob("*.csv")):
        copy = corpus / f"again_{tmp_path.name}.csv"
        try:
            write_csv(copy, read_csv(path, table), table)
            assert copy.read_bytes() == path.read_bytes(), path.name
        finally:
            copy.unlink()


def _rewrite(corpus: Path, tmp_path: Path, name: str, edit, encoding: str = "utf-8") -> Path:
    """Copy one CSV next to the corpus files, rows passed through ``edit(rows, fields) -> fields``."""
    with (corpus / name).open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), list(reader.fieldnames)
    fields = edit(rows, fields) or fields
    out = corpus / f"lenient_{tmp_path.name}.csv"
    with out.open("w", newline="", encoding=encoding) as fh:
        w = csv.DictWriter(fh, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def _floats(rows, fields):
    for r in rows:
        r["mask"] = f"{r['mask']}.0"
        r["num_classes"] = "2.0"


def _task_id_as_name(rows, fields):
    for r in rows:
        r["task_name"] = r["task_id"]


def _drop_point_2(rows, fields):
    return [f for f in fields if f != "point_2_xy"]


@pytest.mark.parametrize("name,edit,encoding,match", [
    ("breast_2cls.csv", _floats, "utf-8", r"row\(s\) 2, 3, .*column mask written as a float with an integer value"),
    ("breast_2cls.csv", _floats, "utf-8", r"column num_classes written as a float .* \(first: '2.0' -> 2\)"),
    ("breast_2cls.csv", lambda rows, fields: None, "utf-8-sig", "UTF-8 byte-order mark at the start of the file"),
    ("breast_2cls.csv", _task_id_as_name, "utf-8", "task_name 'breast_2cls' accepted for the classification task"),
])
def test_lenient_reads_warn_and_read_the_same_records(corpus, tmp_path, name, edit, encoding, match):
    table = task_table(TASKS)
    edited = _rewrite(corpus, tmp_path, name, edit, encoding)
    try:
        with pytest.warns(UserWarning) as record:
            got = read_csv(edited, table)
        assert any(re.search(match, str(w.message)) for w in record), [str(w.message) for w in record]
        assert all(str(edited) in str(w.message) for w in record)
    finally:
        edited.unlink()
    assert [(r.image, r.label) for r in got] == [(r.image, r.label) for r in read_csv(corpus / name, table)]


def test_missing_point_column(corpus, tmp_path):
    table = task_table(TASKS)
    edited = _rewrite(corpus, tmp_path, "FUGC.csv", _drop_point_2)
    try:
        with pytest.raises(DataError, match=r":2: task 'FUGC' has 2 points but column point_2_xy is missing"):
            read_csv(edited, table)
        with pytest.warns(UserWarning, match=r"point_2_xy missing or empty: the point is read as unknown"):
            got = read_csv(edited, table, missing_points="unknown")
    finally:
        edited.unlink()
    original = read_csv(corpus / "FUGC.csv", table)
    assert [r.points[0] for r in got] == [r.points[0] for r in original]
    assert all(math.isnan(r.points[1][0]) and math.isnan(r.points[1][1]) for r in got)


def test_data_root_may_be_the_folder_above_csv_files(corpus):
    table = task_table(TASKS)
    assert csv_folder(corpus.parent) == corpus == csv_folder(corpus)
    assert read_csv_folder(corpus.parent, table) == read_csv_folder(corpus, table)
