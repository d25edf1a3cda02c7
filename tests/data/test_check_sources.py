"""``data.check_sources``: a node without the raw sources trusts the cache's recorded fingerprint (and says so),
while a machine that can see them still catches a changed source (foundation.data.cache)."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from foundation.data.cache import DataCache
from foundation.errors import ConfigError, DataError
from tests.data.test_cache import TextBuilder


def _listing(folder: Path):
    """The sources, listed lazily; the list records that it was called (the walk that trust skips)."""
    calls: list[int] = []

    def listed() -> list[Path]:
        calls.append(1)
        return sorted(folder.iterdir())
    return listed, calls


@pytest.fixture
def built(tmp_path):
    """A cache built where the sources are (check always), and the source folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name, text in [("a.txt", "1 2 3"), ("b.txt", "4 5")]:
        (src / name).write_text(text)
    DataCache(tmp_path / "cache", TextBuilder(), check_sources="always").prepare(sorted(src.iterdir()))
    return tmp_path / "cache", src


def test_auto_still_catches_a_changed_source_where_the_sources_are_visible(built):
    folder, src = built
    (src / "b.txt").write_text("4 5 6")
    os.utime(src / "b.txt", ns=(1, 1))  # another size and mtime
    listed, calls = _listing(src)
    cache = DataCache(folder, TextBuilder(), check_sources="auto", source_root=src)
    assert not cache.trusts_sources()
    with pytest.raises(DataError, match="built from other sources"):
        cache.head(listed)
    builder = TextBuilder()
    DataCache(folder, builder, check_sources="auto", source_root=src).prepare(listed)
    assert builder.reads == ["a.txt", "b.txt"]  # rebuilt
    assert DataCache(folder, TextBuilder()).index(sorted(src.iterdir()))["entries"][1]["meta"]["n"] == 3
    assert len(calls) == 2


def test_auto_trusts_the_recorded_fingerprint_without_the_sources_and_logs_one_note(built, tmp_path, caplog):
    folder, src = built
    node = tmp_path / "node"
    shutil.copytree(folder, node / "cache")
    shutil.rmtree(src)  # this node holds the cache only
    listed, calls = _listing(src)
    builder = TextBuilder()
    cache = DataCache(node / "cache", builder, check_sources="auto", source_root=src)
    assert cache.trusts_sources()
    with caplog.at_level(logging.WARNING, logger="foundation.data.cache"):
        report = cache.prepare(listed)
        head = cache.head(listed)
    assert calls == [] and builder.reads == []  # the sources were neither listed nor read
    assert report["n_kept"] == 2 and head["fingerprint"] == report["fingerprint"]
    notes = [r.getMessage() for r in caplog.records if "is trusted" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert str(src) in notes[0] and "data.check_sources=always" in notes[0] and report["fingerprint"] in notes[0]


def test_trust_still_checks_settings_and_code_and_always_requires_the_sources(built, tmp_path):
    folder, src = built
    shutil.rmtree(src)
    listed, calls = _listing(src)
    with pytest.raises(DataError, match=r"other settings \['scale'\].*not on this machine: rebuild it where"):
        DataCache(folder, TextBuilder(scale=2.0), check_sources="auto", source_root=src).head(listed)

    class Newer(TextBuilder):
        version = "2"
    with pytest.raises(DataError, match="other code.*set data.check_sources=auto to rebuild"):
        DataCache(folder, Newer(), check_sources="never").prepare(listed)
    with pytest.raises(FileNotFoundError):  # always: the walk runs, and finds no folder
        DataCache(folder, TextBuilder(), check_sources="always", source_root=src).head(listed)
    with pytest.raises(DataError, match=r"src: the toy sources do not exist on this machine, .*elsewhere holds no "
                                        r"complete cache .*fix data.source, or build the cache where the sources are"):
        DataCache(tmp_path / "elsewhere", TextBuilder(), check_sources="auto", source_root=src).prepare(listed)
    with pytest.raises(ConfigError, match="data.check_sources: unknown 'sometimes'; valid: auto, always, never"):
        DataCache(folder, TextBuilder(), check_sources="sometimes")
    assert calls == [1]  # only the 'always' cache listed them


def test_never_skips_the_walk_even_where_the_sources_are(built, caplog):
    folder, src = built
    (src / "a.txt").write_text("9 9 9 9")  # changed, but never is asked not to look
    listed, calls = _listing(src)
    with caplog.at_level(logging.WARNING, logger="foundation.data.cache"):
        DataCache(folder, TextBuilder(), check_sources="never", source_root=src).head(listed)
    assert calls == [] and any("data.check_sources=never" in r.getMessage() for r in caplog.records)


def test_never_still_builds_a_missing_cache_where_the_sources_are(built, tmp_path):
    _, src = built
    listed, calls = _listing(src)
    builder = TextBuilder()
    report = DataCache(tmp_path / "new", builder, check_sources="never", source_root=src).prepare(listed)
    assert report["n_kept"] == 2 and builder.reads == ["a.txt", "b.txt"] and calls == [1]
