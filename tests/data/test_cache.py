"""foundation.data.cache: fingerprint, staged build, the one report format, no-op on a current cache."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.data.cache import CacheBuilder, DataCache, Part, fingerprint, path_signature
from foundation.errors import DataError


class TextBuilder(CacheBuilder):
    """A toy modality: each source is a text file of numbers; 'bad' files raise DataError."""

    kind = "toy"

    def __init__(self, scale: float = 1.0, fail_on: str = "") -> None:
        self.scale, self.fail_on, self.reads = scale, fail_on, []

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def read_source(self, source: Path) -> Part:
        self.reads.append(source.name)
        if source.name == self.fail_on:
            raise RuntimeError("crash in the middle of the build")  # not a DataError: aborts the build
        try:
            values = np.asarray([float(v) for v in source.read_text().split()], np.float32)
        except ValueError as err:
            raise DataError(f"{source}: not a list of numbers ({err}); fix or remove the file") from err
        return Part({"x": values * self.scale}, {"n": int(values.size)})


class StackingBuilder(TextBuilder):
    """Combines the parts into one store array, like the EEG and ultrasound builders."""

    def finalize(self, folder: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
        parts = [np.load(folder / "parts" / f"{e['key']}.x.npy") for e in entries]
        np.save(folder / "all.npy", np.concatenate(parts))
        return {"total": int(sum(p.size for p in parts))}


@pytest.fixture
def sources(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name, text in [("a.txt", "1 2 3"), ("b.txt", "4 5"), ("bad.txt", "1 two 3"), ("c.txt", "6")]:
        (folder / name).write_text(text)
    return sorted(folder.iterdir())


def test_report_lists_every_source_kept_or_left_out_with_reason(sources, tmp_path):
    cache = DataCache(tmp_path / "cache", TextBuilder())
    report = cache.prepare(sources)
    assert report["n_sources"] == 4 and report["n_kept"] == 3 and report["n_left_out"] == 1
    assert [s["source"] for s in report["sources"]] == [str(p) for p in sources]
    status = {Path(s["source"]).name: s for s in report["sources"]}
    assert {n for n, s in status.items() if s["status"] == "kept"} == {"a.txt", "b.txt", "c.txt"}
    assert status["bad.txt"]["status"] == "left_out"
    assert "bad.txt: not a list of numbers" in status["bad.txt"]["reason"] and "fix or remove" in status["bad.txt"]["reason"]
    assert all("reason" not in s for s in report["sources"] if s["status"] == "kept")
    assert json.loads((tmp_path / "cache" / "report.json").read_text()) == report == cache.report()
    index = cache.index(sources)
    assert [Path(e["source"]).name for e in index["entries"]] == ["a.txt", "b.txt", "c.txt"]
    assert [e["meta"]["n"] for e in index["entries"]] == [3, 2, 1]
    np.testing.assert_array_equal(cache.part(index["entries"][1]["key"], "x"), [4, 5])


def test_second_prepare_is_a_no_op(sources, tmp_path):
    builder = TextBuilder()
    cache = DataCache(tmp_path / "cache", builder)
    cache.prepare(sources)
    n_reads = len(builder.reads)
    stamp = (tmp_path / "cache" / "index.json").stat().st_mtime_ns
    again = cache.prepare(sources)
    assert len(builder.reads) == n_reads  # no source read again
    assert (tmp_path / "cache" / "index.json").stat().st_mtime_ns == stamp
    assert again == cache.report()


def test_fingerprint_changes_with_sources_settings_and_version(sources, tmp_path):
    base = DataCache(tmp_path / "c", TextBuilder()).fingerprint(sources)
    assert DataCache(tmp_path / "c", TextBuilder()).fingerprint(sources) == base  # deterministic
    assert DataCache(tmp_path / "c", TextBuilder(scale=2.0)).fingerprint(sources) != base  # settings
    assert DataCache(tmp_path / "c", TextBuilder()).fingerprint(sources[:-1]) != base  # one source fewer

    class Newer(TextBuilder):
        version = "2"

    assert DataCache(tmp_path / "c", Newer()).fingerprint(sources) != base  # code version
    st = sources[0].stat()
    os.utime(sources[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: new mtime
    assert DataCache(tmp_path / "c", TextBuilder()).fingerprint(sources) != base
    sources[1].write_text("4 5 6 7")  # edited: new size
    assert fingerprint([path_signature(p) for p in sources], {"scale": 1.0}, "toy/1") != base


def test_changed_source_triggers_rebuild_and_stale_index_is_refused(sources, tmp_path):
    cache = DataCache(tmp_path / "cache", TextBuilder())
    cache.prepare(sources)
    sources[0].write_text("9 9 9 9")
    with pytest.raises(DataError, match=r"cache.*built from other sources, settings or code.*prepare\(config\)"):
        cache.index(sources)
    assert not cache.is_current(sources)
    cache.prepare(sources)
    assert cache.index(sources)["entries"][0]["meta"]["n"] == 4


def test_failed_build_leaves_the_old_cache(sources, tmp_path):
    good = DataCache(tmp_path / "cache", StackingBuilder())
    good.prepare(sources)
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir() if p.is_file()}
    sources[0].write_text("7 7")  # a change forces a rebuild, which crashes on c.txt (after a.txt, b.txt)
    with pytest.raises(RuntimeError, match="crash in the middle"):
        DataCache(tmp_path / "cache", StackingBuilder(fail_on="c.txt")).prepare(sources)
    after = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir() if p.is_file()}
    assert after == before  # the old cache, whole
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # the lock file stays
    assert left == ["cache", "src"]  # no staging folder left behind
    np.testing.assert_array_equal(good.array("all"), [1, 2, 3, 4, 5, 6])
    assert good.index()["total"] == 6


def test_no_usable_source_raises_and_keeps_the_old_cache(sources, tmp_path):
    cache = DataCache(tmp_path / "cache", TextBuilder())
    cache.prepare(sources)
    old = (tmp_path / "cache" / "index.json").read_bytes()
    for p in sources:
        p.write_text("x")
    with pytest.raises(DataError, match=r"(?s)toy cache .*none of the 4 source\(s\) could be cached.*\n  \S*a.txt: not a list"):
        cache.prepare(sources)
    assert (tmp_path / "cache" / "index.json").read_bytes() == old


def test_missing_cache_and_missing_source_say_what_to_do(sources, tmp_path):
    with pytest.raises(DataError, match=r"not a complete toy cache \(no index.json\).*prepare\(config\)"):
        DataCache(tmp_path / "nowhere", TextBuilder()).index()
    with pytest.raises(DataError, match=r"gone.txt: source file not found"):
        DataCache(tmp_path / "cache", TextBuilder()).prepare([*sources, tmp_path / "gone.txt"])


def test_finalize_combines_parts_into_the_store(sources, tmp_path):
    cache = DataCache(tmp_path / "cache", StackingBuilder(scale=0.5))
    cache.prepare(sources)
    np.testing.assert_allclose(cache.array("all"), np.array([1, 2, 3, 4, 5, 6]) * 0.5)
    assert isinstance(cache.array("all"), np.memmap) and not isinstance(cache.array("all", mmap=False), np.memmap)


def test_a_build_finished_elsewhere_first_is_used(sources, tmp_path):
    """Two nodes on a shared disk build the same cache: the later one keeps the first one's result."""
    folder = tmp_path / "cache"
    other: list[int] = []

    class Racing(TextBuilder):
        def read_source(self, source: Path) -> Part:
            if source.name == "c.txt" and not other:
                DataCache(folder, TextBuilder()).prepare(sources)  # the other node finishes first
                other.append((folder / "index.json").stat().st_ino)
            return super().read_source(source)

    report = DataCache(folder, Racing()).prepare(sources)
    assert report == DataCache(folder, TextBuilder()).report()
    assert (folder / "index.json").stat().st_ino == other[0]  # the other node's cache was kept, not replaced
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["cache", "src"]
