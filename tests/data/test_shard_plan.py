"""Shards assigned to ranks (``foundation.data.shard_plan``) and a cache's shard map."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.data.cache import SHARDS, CacheBuilder, DataCache, Part
from foundation.data.shard_plan import assign_shards, check_shard_files
from foundation.errors import DataError
from tests.data.test_cache_shards import _Rows


@pytest.mark.parametrize("rows,world", [([10] * 7, 2), ([80] * 51, 8), ([5, 0, 7, 0, 3, 9, 9, 1], 3),
                                        ([1] * 4, 4), ([100, 1, 1, 1], 2), (list(range(1, 30)), 5)])
def test_runs_are_contiguous_cover_every_shard_and_each_holds_items(rows, world):
    runs = assign_shards(rows, world)
    assert len(runs) == world and runs[0].start == 0 and runs[-1].stop == len(rows)
    assert all(a.stop == b.start for a, b in zip(runs[:-1], runs[1:]))
    loads = [sum(rows[k] for k in run) for run in runs]
    assert min(loads) > 0


def test_each_cut_is_within_one_shard_of_its_share():
    rng = np.random.default_rng(0)
    for trial in range(200):
        rows = rng.integers(1, 50, rng.integers(2, 40))
        world = int(rng.integers(1, len(rows) // 2 + 2))
        runs = assign_shards(rows, world)
        ends = np.concatenate([[0], np.cumsum(rows)])
        for r, run in enumerate(runs[1:], start=1):
            # the cut before rank r sits at the shard boundary nearest r/world of the rows (or one it is forced to)
            assert abs(ends[run.start] - rows.sum() * r / world) <= rows.max(), (rows.tolist(), world, runs)


def test_equal_shards_differ_by_one_shard_at_most():
    for n in range(2, 40):
        for world in range(1, min(n, 9)):
            sizes = [len(r) for r in assign_shards([64] * n, world)]
            assert max(sizes) - min(sizes) <= 1, (n, world, sizes)


def test_too_few_shards_for_the_ranks():
    with pytest.raises(DataError, match="the cache: 2 shard.*fewer than the 3 ranks.*smaller shards"):
        assign_shards([4, 0, 4], 3)


def test_a_cache_shard_map_names_each_shards_files(tmp_path):
    cache = DataCache(tmp_path / "c", _Rows(), shard_bytes=7 * 24)  # 7 rows per shard, 50 rows: 8 shards
    cache.prepare(["30:0", "20:30"])
    rows = np.array([0, 6, 7, 49, 13])
    shard_map = cache.shard_map(rows)
    assert shard_map.item_shard.tolist() == [0, 0, 1, 7, 1] and shard_map.n_shards == 8
    assert shard_map.counts().tolist() == [2, 2, 0, 0, 0, 0, 0, 1]
    folder = tmp_path / "c" / SHARDS
    assert shard_map.files[3] == (folder / "x.00003.npy", folder / "label.00003.npy")
    assert all(p.is_file() for files in shard_map.files for p in files)
    check_shard_files(shard_map, range(0, 8), 0, 1)  # all present: no error

    (folder / "label.00005.npy").unlink()  # this node lacks one shard file of rank 1's run 4-7
    check_shard_files(shard_map, range(0, 4), 0, 2)  # rank 0 does not need it
    with pytest.raises(DataError, match=r"label\.00005\.npy: missing on this node .*rank 1 of 2 reads shards 4-7 "
                                        r".*copy those shard files.*or set train.shard_assignment=global"):
        check_shard_files(shard_map, range(4, 8), 1, 2)


class _Whole(CacheBuilder):
    """A builder without per-item arrays: one file per source (like the fMRI cache)."""

    kind, version = "whole", "1"

    def settings(self) -> dict[str, Any]:
        return {}

    def signature(self, source: Any) -> Any:
        return source

    def read_source(self, source: Any) -> Part:
        return Part({"x": np.zeros(3)})


def test_a_cache_without_shards_is_refused_for_rank_assignment(tmp_path):
    cache = DataCache(tmp_path / "w", _Whole())
    cache.prepare(["a", "b"])
    with pytest.raises(DataError, match="keeps no shards.*train.shard_assignment=global"):
        cache.shard_map([0, 1])
    assert Path(tmp_path / "w" / "parts").is_dir()


class _Grouped(_Whole):
    """One file per source of ``n`` float64 values (source ``"n"``), grouped into shards like the fMRI cache."""

    kind, version = "grouped", "1"
    part_arrays = ("x",)

    def read_source(self, source: Any) -> Part:
        n = int(source)
        return Part({"x": np.full(n, float(n))}, {"n": n})


def test_grouped_sources_lie_whole_in_one_shard_each_and_the_index_is_split(tmp_path):
    """A cache keeping one file per source (fMRI scans) groups whole sources, in order, into shards of about
    ``shard_bytes``; a source larger than that is a shard alone; each shard's entries are its own file."""
    sizes = [10, 20, 5, 300, 40, 40, 40, 1, 2]  # float64 values: 8 bytes each (plus a 128-byte .npy header)
    cache = DataCache(tmp_path / "g", _Grouped(), shard_bytes=600)
    cache.prepare([str(n) for n in sizes])
    head = cache.head()
    assert "entries" not in head and head["entries_in_shards"]
    of = cache.source_shards()
    assert len(of) == len(sizes) and (np.diff(of) >= 0).all() and of[0] == 0  # consecutive runs of whole sources
    files, parts = cache.shard_files(), tmp_path / "g" / "parts"
    for k in range(len(files)):
        mine = np.flatnonzero(of == k)
        nbytes = sum((parts / f"{i:05d}.x.npy").stat().st_size for i in mine)
        assert nbytes <= 600 or len(mine) == 1, (k, mine, nbytes)  # only a lone oversized source exceeds a shard
        if k + 1 < len(files):  # the next source would not have fitted
            nxt = (parts / f"{mine[-1] + 1:05d}.x.npy").stat().st_size
            assert nbytes + nxt > 600
        assert [e["meta"]["n"] for e in cache.entries([k])] == [sizes[i] for i in mine]
        assert files[k] == tuple(parts / f"{i:05d}.x.npy" for i in mine) + (
            tmp_path / "g" / SHARDS / f"entries.{k:05d}.json",)
    assert of[3] != of[2] and of[3] != of[4]  # the 300-value source (2528 bytes) stands alone
    assert [e["meta"]["n"] for e in cache.index()["entries"]] == sizes
    items = np.array([8, 3, 0, 0, 5])  # the source of each item (an fMRI window: its scan)
    assert cache.shard_map(items).item_shard.tolist() == of[items].tolist()


class _SplitRows(_Rows):
    """``_Rows`` saying which rows each source became: its index is split by shard."""

    kind = "split-rows"

    def finalize(self, folder: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
        first = 0
        for e in entries:
            n = len(np.load(folder / "parts" / f"{e['key']}.label.npy"))
            e["meta"].update(first=first, n=n)
            first += n
        return super().finalize(folder, entries)

    def entry_rows(self, entry: dict[str, Any]) -> tuple[int, int]:
        return entry["meta"]["first"], entry["meta"]["n"]


def test_the_index_is_split_by_shard_and_reassembled_whole(tmp_path):
    sources = ["10:0", "3:10", "1:13", "20:14", "16:34"]  # 50 rows, 7 per shard: "20:14" spans shards 2-4
    split = DataCache(tmp_path / "s", _SplitRows(), shard_bytes=7 * 24)
    split.prepare(sources)
    whole = DataCache(tmp_path / "w", _Rows(), shard_bytes=7 * 24)  # no entry_rows: the old layout
    whole.prepare(sources)

    head = split.head()
    assert head["entries_in_shards"] and "entries" not in head and head["shards"]["items"] == 50
    assert "entries" in whole.head() and not whole.head().get("entries_in_shards")
    index = split.index()
    assert [e["source"] for e in index["entries"]] == sources == [e["source"] for e in whole.index()["entries"]]
    assert whole.entries() == whole.index()["entries"]  # an unsplit cache reads its entries the same way

    def rows_of(k):  # the sources whose rows [first, first + n) meet shard k's rows [7k, 7k + 7)
        return [e["source"] for e in index["entries"]
                if e["meta"]["first"] < 7 * k + 7 and e["meta"]["first"] + e["meta"]["n"] > 7 * k]

    for k in range(8):
        assert [e["source"] for e in split.entries([k])] == rows_of(k), k
    assert [e["source"] for e in split.entries([2, 3, 4])] == ["20:14", "16:34"]  # "20:14" once, though in 3 files

    shard_map = split.shard_map(np.arange(50))
    assert shard_map.files[3][-1] == tmp_path / "s" / SHARDS / "entries.00003.json"
    (tmp_path / "s" / SHARDS / "entries.00006.json").unlink()  # a node without shard 6
    assert [e["source"] for e in split.entries(range(0, 4))] == ["10:0", "3:10", "1:13", "20:14"]
    with pytest.raises(DataError, match=r"entries\.00006\.json: the entries of shard 6 are missing"):
        split.index()
    with pytest.raises(DataError, match=r"entries\.00006\.json: missing on this node"):
        check_shard_files(shard_map, range(4, 8), 1, 2)
