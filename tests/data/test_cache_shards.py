"""Per-item arrays stored in shards: the same rows as the unsharded arrays, only touched shards mapped."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.data.cache import SHARDS, CacheBuilder, DataCache, Part, ShardedArray
from foundation.errors import DataError


class _Rows(CacheBuilder):
    """Each source ``"<n>"`` becomes n rows of a known pattern; finalize stacks them like EEG and ultrasound do."""

    kind, version = "rows", "1"
    item_arrays = ("x", "label")

    def settings(self) -> dict[str, Any]:
        return {}

    def signature(self, source: Any) -> Any:
        return source

    def read_source(self, source: Any) -> Part:
        n, first = (int(v) for v in source.split(":"))
        rows = np.arange(first, first + n)
        x = (rows[:, None, None] * 10 + np.arange(6).reshape(1, 2, 3)).astype(np.float32)  # [n, 2, 3]
        return Part({"x": x, "label": rows.astype(np.int64)})

    def finalize(self, folder: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
        parts = folder / "parts"
        np.save(folder / "x.npy", np.concatenate([np.load(parts / f"{e['key']}.x.npy") for e in entries]))
        np.save(folder / "label.npy", np.concatenate([np.load(parts / f"{e['key']}.label.npy") for e in entries]))
        np.save(folder / "corpus_mean.npy", np.zeros(3))  # not per item: stays whole
        return {}


def _expected(n: int) -> np.ndarray:
    rows = np.arange(n)
    return (rows[:, None, None] * 10 + np.arange(6).reshape(1, 2, 3)).astype(np.float32)


def test_rows_come_back_from_shards_and_only_touched_shards_are_mapped(tmp_path):
    cache = DataCache(tmp_path / "c", _Rows(), shard_bytes=7 * 24)  # a row of x is 24 bytes: 7 rows per shard
    cache.prepare(["30:0", "20:30"])
    files = sorted(p.name for p in (tmp_path / "c" / SHARDS).iterdir())
    assert files == [f"{n}.{k:05d}.npy" for n in ("label", "x") for k in range(8)]  # 50 rows, 7 per shard
    assert not (tmp_path / "c" / "x.npy").exists() and (tmp_path / "c" / "corpus_mean.npy").is_file()

    x = cache.array("x")
    assert isinstance(x, ShardedArray) and x.shape == (50, 2, 3) and x.dtype == np.float32
    want = _expected(50)
    assert np.array_equal(x[0], want[0]) and np.array_equal(x[49], want[49]) and np.array_equal(x[-1], want[49])
    assert x.opened == {0, 7}
    assert np.array_equal(x[[3, 20, 8]], want[[3, 20, 8]]) and np.array_equal(x[10:16], want[10:16])
    assert x.opened == {0, 1, 2, 7}
    assert len(x._open) <= x.max_open
    assert np.array_equal(np.asarray(x), want)
    assert np.array_equal(cache.array("label", mmap=False), np.arange(50))
    with pytest.raises(IndexError, match="row 50 outside the 50 rows"):
        x[50]

    clone = pickle.loads(pickle.dumps(x))  # a DataLoader worker gets the table, not the mapped files
    assert clone._open == {} and np.array_equal(clone[12], want[12])


def test_a_missing_shard_names_the_file_and_the_fix(tmp_path):
    cache = DataCache(tmp_path / "c", _Rows(), shard_bytes=7 * 24)
    cache.prepare(["30:0"])
    (tmp_path / "c" / SHARDS / "x.00002.npy").unlink()
    x = cache.array("x")
    assert np.array_equal(x[0], _expected(1)[0])
    with pytest.raises(DataError, match=r"x\.00002\.npy: shard 2 of the cache is missing; delete the cache folder"):
        x[15]
