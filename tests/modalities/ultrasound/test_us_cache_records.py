"""The ultrasound records from the cache (issue 19): the planner, the split and the records a dataset builds from
the cache's global table (``records.npy``) and per-shard entries equal those from the CSVs, on one machine and on a
node without the CSVs and images (``data.check_sources: auto`` trusts the recorded fingerprint and says so); on one
machine a changed CSV field or image still makes the cache stale.

The reference is the path the dataset took before the records were cached: every CSV record read, the cache row of
each from ``report.json`` (the i-th kept record is row i), the patient split over the records
(:func:`split_records`), the task pools in record order.
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from foundation.errors import DataError
from foundation.modalities.ultrasound.cache import RECORDS, record_name
from foundation.modalities.ultrasound.dataset import UltrasoundDataset, split_records
from foundation.modalities.ultrasound.sampler import BatchPlanner
from tests.modalities.ultrasound._helpers import data_config, make_corpus

NOTE = "is trusted (sources not listed or checked)"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A corpus with one unreadable image (a record left out of the cache), its cache in shards of 8 images."""
    root = tmp_path_factory.mktemp("us-records")
    csv_dir = make_corpus(root / "corpus")
    broken = sorted((root / "corpus" / "images").glob("breast_2cls_*"))[3]
    broken.write_bytes(b"not an image")
    cache = root / "cache"
    config = data_config(csv_dir, cache, sampling="temperature", temperature=1.5)
    from foundation.modalities.ultrasound.dataset import _cache

    c = _cache(config)
    c.shard_bytes = 8 * 64 * 64 * 3  # 8 images a shard
    report = c.prepare(lambda: UltrasoundDataset._read(config))
    assert report["n_left_out"] == 1 and report["n_kept"] == 47
    return {"root": root, "csv_dir": csv_dir, "cache": cache, "broken": broken}


def _reference(config) -> tuple[list, np.ndarray, dict[str, list[int]]]:
    """Records, cache rows and task pools of ``config``'s split, computed from the CSVs and report.json."""
    from foundation.modalities.ultrasound.dataset import _cache

    records = UltrasoundDataset._read(config)
    report = _cache(config).report()
    kept = [e["source"] for e in report["sources"] if e["status"] == "kept"]
    row = {name: i for i, name in enumerate(kept)}
    if config.split == "all":
        chosen = records
    else:
        train, val = split_records(records, config.val_fraction, config.split_seed)
        chosen = [records[i] for i in (train if config.split == "train" else val)]
    chosen = [r for r in chosen if record_name(r) in row]
    by_task: dict[str, list[int]] = {}
    for j, r in enumerate(chosen):
        by_task.setdefault(r.task_id, []).append(j)
    return chosen, np.asarray([row[record_name(r)] for r in chosen]), by_task


def _same_as_csvs(ds: UltrasoundDataset, reference) -> None:
    records, rows, by_task = reference
    assert ds.rows.tolist() == rows.tolist()
    assert list(ds.by_task) == list(by_task) and ds.by_task == by_task  # the same pools, the same task order
    want = BatchPlanner(by_task, ds.config.batch_size, ds.config.sampling, ds.config.temperature, ds.config.mixed_tasks)
    assert list(ds.planner.probs) == list(want.probs)
    assert ds.planner.probs == pytest.approx(want.probs, rel=0, abs=0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [ds.planner.plan(g1) for _ in range(20)] == [want.plan(g2) for _ in range(20)]
    assert ds.records == records  # every field: task, label, box, points, patient, paths, CSV row


@pytest.mark.parametrize("split", ["train", "val", "all"])
def test_the_planner_from_the_cached_table_equals_the_one_from_the_csvs(built, split):
    config = data_config(built["csv_dir"], built["cache"], sampling="temperature", temperature=1.5, split=split)
    ds = UltrasoundDataset(config)
    reference = _reference(config)
    assert (split == "all") == (len(reference[0]) == 47)
    _same_as_csvs(ds, reference)
    if split != "val":  # temperature sampling over tasks of unequal sizes (the left-out image): not trivially equal
        assert len(set(ds.planner.probs.values())) > 1
    # within a rank's shards (train.shard_assignment: rank): the pools of the CSV records whose rows lie there
    shards = [0, 2]
    ds.use_shards(shards)
    mine = {t: [j for j in pool if reference[1][j] // 8 in shards] for t, pool in reference[2].items()}
    assert ds.by_task == {t: pool for t, pool in mine.items() if pool}


def test_a_node_without_the_csvs_and_images_reads_its_shards_only_and_logs_the_note(built, tmp_path, caplog):
    """Only index.json, report.json, records.npy and shards 0-1's files are copied; the corpus is moved away."""
    config = data_config(built["csv_dir"], built["cache"], sampling="temperature", temperature=1.5)
    reference = _reference(config)
    full = UltrasoundDataset(config)
    shard_map = full.shard_map()
    node = tmp_path / "node"
    (node / "shards").mkdir(parents=True)
    for name in ("index.json", "report.json", RECORDS):
        shutil.copy2(built["cache"] / name, node / name)
    for k in (0, 1):
        for path in shard_map.files[k]:
            shutil.copy2(path, node / "shards" / path.name)
    corpus, moved = built["root"] / "corpus", built["root"] / "corpus-elsewhere"
    corpus.rename(moved)
    try:
        caplog.set_level(logging.WARNING)
        ds = UltrasoundDataset(data_config(built["csv_dir"], node, sampling="temperature", temperature=1.5))
        notes = [r.getMessage() for r in caplog.records if NOTE in r.getMessage()]
        assert len(notes) == 1 and str(built["csv_dir"]) in notes[0]
        assert ds.rows.tolist() == reference[1].tolist() and ds.by_task == reference[2]
        ds.use_shards([0, 1])
        for j in sorted({j for pool in ds.by_task.values() for j in pool}):
            assert ds.record(j) == reference[0][j]  # rebuilt from shard 0-1's entry files alone
            ds.sample(j)  # the image and mask rows of those shards
        with pytest.raises(DataError, match="entries.00002.json.*missing"):
            ds.record(int(np.flatnonzero(ds._shard_of == 2)[0]))
        with pytest.raises(DataError, match="no CSV files"):  # always: the CSVs are required
            UltrasoundDataset(data_config(built["csv_dir"], node, check_sources="always"))
        (node / RECORDS).unlink()
        with pytest.raises(DataError, match="records.npy: the ultrasound cache's record table is missing; copy it"):
            UltrasoundDataset(data_config(built["csv_dir"], node))
    finally:
        moved.rename(corpus)


def test_a_changed_csv_field_or_image_is_still_caught_on_one_machine(built):
    """``auto`` with the CSVs visible: a changed label (same image) or a touched image makes the cache stale;
    ``never`` trusts it and serves the recorded label."""
    config = data_config(built["csv_dir"], built["cache"])
    assert config.check_sources == "auto"
    csv = built["csv_dir"] / "breast_2cls.csv"
    text = csv.read_text()
    lines = text.splitlines()
    fields = lines[1].split(",")
    fields[4] = "0" if fields[4] == "1" else "1"  # the first image's class
    csv.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    try:
        with pytest.raises(DataError, match="built from other sources"):
            UltrasoundDataset(config)
        ds = UltrasoundDataset(data_config(built["csv_dir"], built["cache"], check_sources="never", split="all"))
        j = next(j for j, t in enumerate(ds.record_tasks) if t == "breast_2cls")
        assert str(ds.record(j).label) != fields[4]  # the cached (old) label: never does not look
    finally:
        csv.write_text(text)
    image = min((built["root"] / "corpus" / "images").glob("fetal_head_0*"))
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        with pytest.raises(DataError, match="built from other sources"):
            UltrasoundDataset(config)
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(UltrasoundDataset(config).rows) == len(_reference(config)[0])


def test_a_cache_of_other_tasks_is_refused_without_the_csvs(built, tmp_path):
    """The tasks a cache holds are one of its settings: a node without the CSVs cannot serve a task it lacks."""
    node = tmp_path / "node"
    shutil.copytree(built["cache"], node)
    config = data_config(tmp_path / "absent", node, train_tasks=("FUGC",))
    with pytest.raises(DataError, match="other settings \\['tasks'\\]"):
        UltrasoundDataset(config)
