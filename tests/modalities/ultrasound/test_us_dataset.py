"""The dataset: planned batches, labels that follow augmentation, no flips for left/right tasks, patient splits."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError, DataError
from foundation.modalities.ultrasound.dataset import UltrasoundDatasetConfig, UltrasoundDataset
from tests.modalities.ultrasound._helpers import TASKS, data_config, prepared


@pytest.fixture(scope="module")
def train_set(corpus, tmp_path_factory):
    return prepared(corpus, tmp_path_factory.mktemp("cache"), mixed_tasks=True, zoom=0.3, shift=0.1, intensity=0.0)


def test_batches_and_labels_follow_the_image(train_set):
    torch.manual_seed(0)
    seen = set()
    for i in range(6):
        b = train_set[i]
        assert b["image"].shape == (4, 3, 64, 64) and b["mask"].shape == (4, 64, 64)
        for n in range(4):
            tid = TASKS[int(b["task"][n])]
            seen.add(tid)
            img = b["image"][n].mean(0)
            if tid == "FUGC":
                # the demo draws a bright blob (value 1) at each keypoint: it must sit under the target
                for x, y in (b["points"][n][b["point_valid"][n]] * 64).tolist():
                    xi, yi = min(int(x), 63), min(int(y), 63)
                    patch = img[max(yi - 2, 0):yi + 3, max(xi - 2, 0):xi + 3]
                    assert patch.max() > 0.5
            if tid in ("cardiac_multi", "fetal_head"):
                assert b["mask"][n].min() >= 0
            else:
                assert (b["mask"][n] == -1).all()
            if tid == "thyroid_nodule_det" and int(b["box_state"][n]) == 1:
                x0, y0, x1, y1 = (b["box"][n] * 64).tolist()
                assert 0 <= x0 < x1 <= 64.01 and 0 <= y0 < y1 <= 64.01
    assert len(seen) >= 4  # mixed batches draw several tasks


def test_ranks_draw_different_batches_and_draws_repeat_under_the_same_seed(train_set):
    torch.manual_seed(0)
    a = train_set[0]
    torch.manual_seed(0)  # every rank seeds alike; the distributed sampler hands them different indices
    b = train_set[1]
    torch.manual_seed(0)
    again = train_set[0]
    assert not torch.equal(a["index"], b["index"]) or not torch.equal(a["image"], b["image"])
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not torch.equal(train_set[0]["image"], a["image"])  # the global RNG moved on: a new draw


def test_no_flips_for_left_right_tasks(train_set, monkeypatch):
    import foundation.modalities.ultrasound.dataset as mod

    flips = {}
    real = mod.random_geometry

    def spy(g, *, flip, **kw):
        flips.setdefault(flip, 0)
        flips[flip] += 1
        return real(g, flip=flip, **kw)

    monkeypatch.setattr(mod, "random_geometry", spy)
    for j, r in enumerate(train_set.records):
        if r.task_id in ("fetal_head_pos_cls", "breast_2cls"):
            train_set.sample(j, train=True)
    pos = sum(1 for r in train_set.records if r.task_id == "fetal_head_pos_cls")
    assert flips[False] == pos and flips[True] == sum(1 for r in train_set.records if r.task_id == "breast_2cls")


def test_patient_disjoint_split(corpus, tmp_path):
    train = prepared(corpus, tmp_path, split="train")
    val = UltrasoundDataset(data_config(corpus, tmp_path, split="val"))  # one cache serves every split
    assert not {r.group for r in train.records} & {r.group for r in val.records}
    assert len(train.records) + len(val.records) == 8 * len(TASKS)
    assert {r.task_id for r in val.records} == set(TASKS)
    with pytest.raises(DataError, match="built from other sources"):  # another task subset: prepare again
        UltrasoundDataset(data_config(corpus, tmp_path, train_tasks=("fetal_head",)))
    single = prepared(corpus, tmp_path, train_tasks=("fetal_head",))
    assert {int(t) for t in single[0]["task"]} == {TASKS.index("fetal_head")}


def test_letterbox_cache_and_describe(corpus, tmp_path):
    ds = prepared(corpus, tmp_path / "cache", keep_aspect=True, split="all", augment=False)
    j = next(i for i, r in enumerate(ds.records) if r.task_id == "fetal_head")
    g = ds.geometry(j)
    assert g.sx == g.sy  # aspect kept
    stamp = (tmp_path / "cache" / "index.json").stat().st_mtime_ns
    prepared(corpus, tmp_path / "cache", keep_aspect=True, split="all")  # augmentation is not cached: reused
    assert (tmp_path / "cache" / "index.json").stat().st_mtime_ns == stamp
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [tmp_path / "cache"]
    assert "letterboxed" in ds.describe() and "0 left out" in ds.describe()


def test_errors(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CSV files in .*empty.*set data.source: demo"):
        UltrasoundDataset.prepare(data_config(tmp_path / "empty", tmp_path))
    with pytest.raises(DataError, match="nothing: the ultrasound sources do not exist.*no complete cache"):
        UltrasoundDataset.prepare(data_config(tmp_path / "nothing", tmp_path))
    with pytest.raises(DataError, match="not a complete ultrasound cache"):
        UltrasoundDataset(data_config(corpus, tmp_path / "never-built"))
    with pytest.raises(ConfigError, match="data.source is empty.*data.source: demo"):
        UltrasoundDatasetConfig(source="")
    with pytest.raises(ConfigError, match="multiple of 32"):
        UltrasoundDatasetConfig(image_size=50)
    with pytest.raises(ConfigError, match="train.*val.*all"):
        UltrasoundDatasetConfig(split="test")
