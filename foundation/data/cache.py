"""One cache for every modality: read each source once, store arrays, report what was kept and what was left out.

A modality describes only how one source becomes arrays (:meth:`CacheBuilder.read_source`) and, optionally,
how the kept sources' arrays are combined into its store (:meth:`CacheBuilder.finalize`). This module does the
rest the same way for all of them:

- **fingerprint**: a hash of every source's signature (resolved path, size, mtime), the builder's settings and
  its code version (``kind`` + ``version``); a cache whose ``index.json`` holds the same fingerprint is current,
  and a second :meth:`DataCache.prepare` is a no-op;
- **staged build**: everything is written into a temporary sibling folder, which replaces the cache folder
  only when complete (:func:`foundation.atomic.replace_folder`): a build that fails midway leaves the previous
  cache as it was;
- **one report format**: ``report.json`` lists every source, kept or left out, with the reason for each one
  left out (the :class:`~foundation.errors.DataError` its reader raised) and the notes of each one kept with
  a caveat (:attr:`Part.notes`, e.g. a truncated recording read under ``data.allow_truncated``). A bad file
  never stops the build; a build where every source fails raises, listing why. Every :meth:`DataCache.prepare`
  that finds sources left out logs their count, the first few reasons and the report's path;
- **one builder at a time**: :meth:`DataCache.prepare` holds a lock file beside the folder
  (:func:`foundation.data.lock.folder_lock`), so a second run sharing the cache waits, then reuses it.

Layout of a cache folder::

    index.json      fingerprint, kind, version, settings, "entries": one per kept source {source, key, meta}
                    plus whatever finalize adds; a builder that says which rows each source became
                    (:meth:`CacheBuilder.entry_rows`) has its entries split by shard instead
                    ("entries_in_shards": true, ``shards/entries.<k>.json``)
    (source table)  whatever :meth:`CacheBuilder.source_table` writes over every source, kept or not (ultrasound:
                    ``records.npy``, each record's task, patient and row), for a dataset that must not read them
    report.json     {"fingerprint", "kind", "n_sources", "n_kept", "n_left_out", "n_noted",
                     "sources": [{"source", "status": "kept" | "left_out", "reason"?, "notes"?}]}
    parts/<key>.<name>.npy   arrays of each kept source (unless finalize combined and removed them)
    shards/<name>.<k>.npy    the builder's per-item arrays (:attr:`CacheBuilder.item_arrays`), cut into shards of
                             ``shard_items`` rows (about :data:`SHARD_BYTES` each); ``index.json`` "shards" holds
                             the table: items, shard_items, each array's dtype and row shape
    (grouped sources)        a builder that keeps one file per source (:attr:`CacheBuilder.part_arrays`, e.g. an
                             fMRI scan) has its sources grouped into shards instead: consecutive whole sources, about
                             :data:`SHARD_BYTES` of parts each (a source never straddles two shards; one larger than
                             that is a shard alone); "shards" then holds {"sources", "first": [first source of each
                             shard], "parts": names}, and shard ``k``'s files are its sources' ``parts/<key>.<name>.npy``

**The index split by shard.** When the builder says which rows each source became, the per-source entries
(the part of the index that grows with the corpus) are written per shard, ``shards/entries.<k>.json`` holding the
entries whose rows fall in shard ``k``, and ``index.json`` keeps only what does not grow: :meth:`DataCache.head`
reads that, :meth:`DataCache.entries` the entries of chosen shards, :meth:`DataCache.index` reassembles the whole
index (old caches, whose ``index.json`` holds every entry, read the same way). A rank that reads only its shards
(``train.shard_assignment: rank``) thus never loads the full-corpus index.

**Shards.** A corpus larger than a process's memory is read through :class:`ShardedArray`: row ``i`` lives in
shard ``i // shard_items``, whose file is memory-mapped the first time a row of it is read (advised as random
access, so the kernel maps the pages of that row, not megabytes around it), and at most a few shards are mapped
at once (least recently used closed first). A process therefore maps only the shards its
samples fall in, and holds no per-item table: its memory does not grow with the corpus
(``benchmarks/bench_cache_memory.py`` measures it).

**A node without the sources.** Listing and stat-ing every source proves a cache current, but needs the raw
corpus on every node. ``check_sources`` (a dataset's ``data.check_sources``) says when to do it: ``always``;
``never``; ``auto`` (the datasets' default): where the source folder exists, so a single machine always checks
and a changed source is rebuilt, while a node that holds only its cache shards trusts the fingerprint recorded
where the cache was built, still checks the code version and the settings, and logs one line saying so.

Building once in a distributed run (rank 0 builds, the others wait) is done by
:func:`foundation.data.protocol.prepare_dataset`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from foundation.atomic import replace_folder
from foundation.data.lock import clear_stale_stages, folder_lock, stage_prefix
from foundation.data.shard_plan import ShardMap
from foundation.errors import ConfigError, DataError

__all__ = ["CacheBuilder", "DataCache", "Part", "ShardedArray", "ShardMap", "fingerprint", "path_signature", "announce", "INDEX",
           "REPORT", "PARTS", "SHARDS", "SHARD_BYTES", "SHOWN", "CHECKS", "check_sources_option"]

log = logging.getLogger(__name__)

INDEX = "index.json"
REPORT = "report.json"
PARTS = "parts"
SHARDS = "shards"
SHARD_BYTES = 64 * 2**20  # target size of one shard of the largest per-item array
SHOWN = 5  # left-out sources whose reasons are logged; the report lists all
CHECKS = ("auto", "always", "never")  # data.check_sources: when the sources are walked to check the fingerprint


def check_sources_option(value: str, key: str = "data.check_sources") -> None:
    """Refuse an unknown ``data.check_sources`` value.

    Raises:
        ConfigError: ``value`` is not one of :data:`CHECKS`.
    """
    if value not in CHECKS:
        raise ConfigError(f"{key}: unknown {value!r}; valid: {', '.join(CHECKS)} (auto: check the sources where "
                          "their folder exists, trust the cache's recorded fingerprint where it does not)")


def path_signature(path: str | Path) -> list[Any]:
    """``[resolved path, size in bytes, mtime in ns]`` of a file: what tells a changed source.

    Raises:
        DataError: the file does not exist.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: source file not found; check data.source (or delete the file from the list)") from None
    return [str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)]


def fingerprint(signatures: Sequence[Any], settings: dict[str, Any], version: str) -> str:
    """Hash of the sources' signatures, the settings (JSON) and the code version: 16 hex digits."""
    blob = json.dumps({"sources": list(signatures), "settings": settings, "version": version}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _line(entry: dict[str, Any]) -> str:
    """A left-out source and its reason, the source named once."""
    reason = entry["reason"]
    return reason if reason.startswith(entry["source"]) else f"{entry['source']}: {reason}"


def announce(report: dict[str, Any], folder: Path) -> None:
    """Log the sources a cache left out (count, the first :data:`SHOWN` reasons, the report's path) and notes."""
    path = Path(folder) / REPORT
    left = [e for e in report["sources"] if e["status"] == "left_out"]
    if left:
        lines = "\n".join(f"  {_line(e)}" for e in left[:SHOWN])
        more = f"\n  ... and {len(left) - SHOWN} more" if len(left) > SHOWN else ""
        log.warning("%d of %d source(s) left out of the %s cache; all reasons in %s:\n%s%s", len(left),
                    report["n_sources"], report["kind"], path, lines, more)
    noted = [e for e in report["sources"] if e.get("notes")]
    if noted:
        lines = "\n".join(f"  {e['source']}: {'; '.join(e['notes'])}" for e in noted[:SHOWN])
        more = f"\n  ... and {len(noted) - SHOWN} more" if len(noted) > SHOWN else ""
        log.warning("%d %s source(s) kept with caveats (listed in %s):\n%s%s", len(noted), report["kind"], path,
                    lines, more)


@dataclass
class Part:
    """What one source becomes: arrays stored as ``parts/<key>.<name>.npy`` and JSON metadata for the index.

    Attributes:
        arrays: the arrays to store.
        meta: JSON metadata for the source's ``index.json`` entry.
        notes: caveats about a kept source (what was lost or assumed), listed in ``report.json`` and logged.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class CacheBuilder(ABC):
    """The per-modality part of a cache: read and preprocess one source.

    Subclasses set ``kind`` (a short name for messages, e.g. "eeg") and ``version`` (bump it when
    :meth:`read_source` or :meth:`finalize` changes what they write, so old caches are rebuilt).
    """

    kind: str = "data"
    version: str = "1"
    item_arrays: tuple[str, ...] = ()  # arrays finalize writes with one row per item: stored in shards
    part_arrays: tuple[str, ...] = ()  # arrays kept one file per source (no item_arrays): sources grouped in shards
    source_settings: tuple[str, ...] = ()  # keys of settings() read from the source folder (not compared without it)

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the cache, as plain JSON data."""

    @abstractmethod
    def read_source(self, source: Any) -> Part:
        """Read and preprocess one source.

        Raises:
            DataError: the source is unreadable or unusable; it is left out and the message goes to the report.
        """

    def source_name(self, source: Any) -> str:
        """How the report names ``source`` (default: ``str(source)``)."""
        return str(source)

    def signature(self, source: Any) -> Any:
        """What tells a changed source (default: :func:`path_signature` of ``source``)."""
        return path_signature(source)

    def entry_rows(self, entry: dict[str, Any]) -> tuple[int, int] | None:
        """``(first row, rows)`` of the per-item arrays that kept source ``entry`` became (after :meth:`finalize`),
        or None (default): the entries then stay whole in ``index.json`` instead of being split by shard."""
        return None

    def source_table(self, folder: Path, sources: Sequence[Any], kept: Sequence[int]) -> dict[str, Any]:
        """Write a small table over every source, kept or left out, into ``folder`` (default: none): what a
        dataset needs of every source without reading them, e.g. their rows and groups (one small array).

        Args:
            folder: the staging folder.
            sources: every source, in order.
            kept: [sources] the entry (kept-source) index of each source, -1 where it was left out.

        Returns:
            Extra keys for ``index.json``.
        """
        return {}

    def finalize(self, folder: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Combine the kept sources' parts into the store (default: keep one file per array per source).

        Args:
            folder: the staging folder (``folder / "parts"`` holds the parts).
            entries: one per kept source, in order: ``{"source", "key", "meta"}``.

        Returns:
            Extra keys for ``index.json``.
        """
        return {}


class DataCache:
    """A cache folder built by a :class:`CacheBuilder`.

    Args:
        folder: the cache folder (created by :meth:`prepare`).
        builder: the modality's builder.
        shard_bytes: target size of one shard.
        check_sources: when :meth:`prepare` and :meth:`head` walk the sources to check the fingerprint (see
            :meth:`trusts_sources`): ``always``; ``never`` (trust the recorded fingerprint); ``auto``: where
            ``source_root`` exists.
        source_root: the folder (or file) the sources are listed from, whose presence ``auto`` looks at.
    """

    def __init__(self, folder: str | Path, builder: CacheBuilder, shard_bytes: int = SHARD_BYTES,
                 check_sources: str = "always", source_root: str | Path | None = None) -> None:
        check_sources_option(check_sources)
        self.folder = Path(folder)
        self.builder = builder
        self.shard_bytes = shard_bytes
        self.check_sources = check_sources
        self.source_root = Path(source_root) if source_root is not None else None
        self._shards: dict[str, Any] | None = None  # the index's shard table, read once
        self._noted = False  # the trust note is logged once per cache object

    def trusts_sources(self) -> bool:
        """Whether the sources are left unread and the cache's recorded fingerprint is trusted instead:
        ``check_sources`` is ``never``, or ``auto`` and ``source_root`` does not exist on this machine (a node
        holding only its cache shards). A visible source folder is always checked under ``auto``, so a changed
        source is caught on any machine that can see it."""
        if self.check_sources == "never":
            return True
        return self.check_sources == "auto" and self.source_root is not None and not self.source_root.exists()

    def _trusted(self, index: dict[str, Any]) -> None:
        """Check what can be checked without the sources (kind, code version, settings) and log the note once.

        Raises:
            DataError: the cache was built by other code or settings (these need no source to compare).
        """
        b = self.builder
        want = json.loads(json.dumps(b.settings(), default=str))
        have = index.get("settings", {})
        differ = sorted(k for k in set(want) | set(have)
                        if k not in b.source_settings and want.get(k) != have.get(k))
        if index.get("kind") != b.kind or str(index.get("version")) != b.version or differ:
            what = f"settings {differ}" if differ else f"code ({index.get('kind')}/{index.get('version')} against " \
                                                       f"{b.kind}/{b.version})"
            fix = "set data.check_sources=auto to rebuild it from the sources" if self.check_sources == "never" \
                else f"its sources ({self.source_root}) are not on this machine: rebuild it where they are and copy it here"
            raise DataError(f"{self.folder}: the {b.kind} cache was built with other {what} than the config asks for; "
                            f"{fix}, or fix the config")
        if not self._noted:
            self._noted = True
            why = "data.check_sources=never" if self.check_sources == "never" else \
                f"the sources ({self.source_root}) are not on this machine"
            log.warning("%s cache %s: %s, so its recorded fingerprint %s is trusted (sources not listed or checked); "
                        "set data.check_sources=always to require and check them", b.kind, self.folder, why,
                        index.get("fingerprint"))

    def fingerprint(self, sources: Sequence[Any]) -> str:
        """Fingerprint of ``sources`` under the builder's settings and version."""
        b = self.builder
        return fingerprint([b.signature(s) for s in sources], b.settings(), f"{b.kind}/{b.version}")

    def is_current(self, sources: Sequence[Any]) -> bool:
        """Whether the folder holds a complete cache of ``sources`` with the current settings and code."""
        index = self.folder / INDEX
        if not index.is_file() or not (self.folder / REPORT).is_file():
            return False
        return json.loads(index.read_text()).get("fingerprint") == self.fingerprint(sources)

    def prepare(self, sources: Sequence[Any] | Callable[[], Sequence[Any]]) -> dict[str, Any]:
        """Build the cache unless it is current; return the report (see the module docstring).

        ``sources`` may be a function listing them: it is not called when :meth:`trusts_sources` and the cache is
        complete (it is then checked against the settings and code, not rebuilt); with ``never`` and no cache yet,
        the cache is built as usual where the sources are.

        Another process preparing the same folder is waited for (see :mod:`foundation.data.lock`); its cache is
        then reused when current. Sources left out are logged (:func:`announce`) on every call.

        Raises:
            DataError: no source could be cached (the message gives each reason); the old cache is kept. When
                the sources are trusted: no complete cache, or one of other settings or code.
        """
        missing = [n for n in (INDEX, REPORT) if not (self.folder / n).is_file()]
        absent = self.source_root is not None and not self.source_root.exists()
        if self.trusts_sources() and (not missing or absent):  # never with no cache yet and the sources here: build
            if missing:
                raise DataError(f"{self.source_root}: the {self.builder.kind} sources do not exist on this machine, "
                                f"and {self.folder} holds no complete cache to use without them (no "
                                f"{', '.join(missing)}); fix data.source, or build the cache where the sources are "
                                "and copy index.json, report.json and this node's shard files here")
            self.head(sources)  # complete, built by this code and these settings; logs the note
            report = self.report()
            announce(report, self.folder)
            return report
        sources = list(sources() if callable(sources) else sources)
        with folder_lock(self.folder):
            if self.is_current(sources):
                report = self.report()
            else:
                clear_stale_stages(self.folder)
                report = self._build(sources)
        announce(report, self.folder)
        return report

    def _build(self, sources: list[Any]) -> dict[str, Any]:
        b, fp = self.builder, self.fingerprint(sources)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=stage_prefix(self.folder), dir=self.folder.parent))
        try:
            (stage / PARTS).mkdir()
            entries, listed, kept = [], [], []
            bar = tqdm(sources, desc=f"{b.kind} cache: reading {len(sources)} source(s) into {self.folder.name}",
                       unit="source", disable=len(sources) < 2, dynamic_ncols=True, mininterval=1.0, leave=False)
            for source in bar:
                name = b.source_name(source)
                try:
                    part = b.read_source(source)
                except DataError as err:
                    listed.append({"source": name, "status": "left_out", "reason": str(err)})
                    kept.append(-1)
                    continue
                kept.append(len(entries))
                key = f"{len(entries):05d}"
                for arr_name, arr in part.arrays.items():
                    np.save(stage / PARTS / f"{key}.{arr_name}.npy", arr)
                entries.append({"source": name, "key": key, "meta": part.meta})
                listed.append({"source": name, "status": "kept", **({"notes": list(part.notes)} if part.notes else {})})
            if not entries:
                reasons = "\n".join(f"  {_line(e)}" for e in listed) or "  (no source given)"
                raise DataError(f"{b.kind} cache {self.folder}: none of the {len(sources)} source(s) could be cached; "
                                f"fix or replace them:\n{reasons}")
            extra = b.finalize(stage, entries)
            extra.update(b.source_table(stage, sources, kept))
            index = {"fingerprint": fp, "kind": b.kind, "version": b.version, "settings": b.settings()}
            if b.item_arrays:
                extra["shards"] = _write_shards(stage, b.item_arrays, self.shard_bytes)
                rows = [b.entry_rows(e) for e in entries]
                if all(r is not None for r in rows):
                    _write_entries(stage, entries, rows, extra["shards"])
                    index["entries_in_shards"] = True
            elif b.part_arrays:
                extra["shards"] = _group_sources(stage, entries, b.part_arrays, self.shard_bytes)
                index["entries_in_shards"] = True
            if not index.get("entries_in_shards"):
                index["entries"] = entries
            index.update(extra)
            report = {"fingerprint": fp, "kind": b.kind, "n_sources": len(sources), "n_kept": len(entries),
                      "n_left_out": len(sources) - len(entries),
                      "n_noted": sum(1 for e in listed if e.get("notes")), "sources": listed}
            (stage / INDEX).write_text(json.dumps(index, default=str))
            (stage / REPORT).write_text(json.dumps(report, indent=1))
            if self.is_current(sources):  # another process (a node on a shared disk) finished the same build first
                return self.report()
            try:
                replace_folder(stage, self.folder)
            except OSError:
                if not self.is_current(sources):
                    raise
                return self.report()  # lost the race to an identical build: use it
            return report
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def _require(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise DataError(f"{self.folder}: not a complete {self.builder.kind} cache (no {name}); build it with the "
                            "dataset's prepare(config) (pretrain.py and finetune.py do) or delete the folder")
        return path

    def index(self, sources: Sequence[Any] | Callable[[], Sequence[Any]] | None = None) -> dict[str, Any]:
        """The whole index: ``index.json`` with every entry (reassembled from the shards' entry files where the
        index is split); with ``sources``, checked to be current for them.

        Args:
            sources: the sources the cache must hold, or a function listing them (called only once the
                cache is known to be complete, so a missing cache is reported as such).

        Raises:
            DataError: no complete cache, a missing entry file, or (with ``sources``) a cache of other sources,
                settings or code.
        """
        index = self.head(sources)
        if index.get("entries_in_shards"):
            index["entries"] = self.entries()
        return index

    def head(self, sources: Sequence[Any] | Callable[[], Sequence[Any]] | None = None) -> dict[str, Any]:
        """``index.json`` as stored: without the entries where they are split by shard (see :meth:`index`).

        With ``sources`` where :meth:`trusts_sources`, they are not listed: only the settings and code are checked.

        Raises:
            DataError: as :meth:`index`.
        """
        index = json.loads(self._require(INDEX).read_text())
        if sources is not None and self.trusts_sources():
            self._trusted(index)
            return index
        if callable(sources):
            sources = sources()
        if sources is not None and index.get("fingerprint") != self.fingerprint(sources):
            raise DataError(f"{self.folder}: the {self.builder.kind} cache was built from other sources, settings or "
                            "code than the config asks for; run the dataset's prepare(config) to rebuild it")
        return index

    def entries(self, shards: Sequence[int] | range | None = None) -> list[dict[str, Any]]:
        """The entries (one per kept source) of the sources with rows in ``shards`` (None: all), in order.

        Raises:
            DataError: an entry file of those shards is missing.
        """
        head = json.loads(self._require(INDEX).read_text())
        if not head.get("entries_in_shards"):
            return list(head["entries"])
        if shards is None:
            shards = range(_n_shards(head["shards"]))
        seen: dict[str, dict[str, Any]] = {}
        for k in shards:
            path = self.folder / SHARDS / f"entries.{k:05d}.json"
            if not path.is_file():
                raise DataError(f"{path}: the entries of shard {k} are missing; copy the cache's shards/ files of "
                                f"shard {k} from the node that built it, or delete {self.folder} to rebuild")
            for entry in json.loads(path.read_text()):
                seen.setdefault(entry["key"], entry)  # a source whose rows span two shards is listed in both
        return [seen[key] for key in sorted(seen)]

    def report(self) -> dict[str, Any]:
        """The cache's ``report.json``."""
        return json.loads(self._require(REPORT).read_text())

    def part(self, key: str, name: str, mmap: bool = True) -> np.ndarray:
        """Array ``name`` of the kept source ``key`` (memory-mapped unless ``mmap`` is False)."""
        return np.load(self.folder / PARTS / f"{key}.{name}.npy", mmap_mode="r" if mmap else None)

    def _shard_table(self) -> dict[str, Any]:
        if self._shards is None:
            self._shards = json.loads(self._require(INDEX).read_text()).get("shards", {})
        return self._shards

    def shard_files(self) -> tuple[tuple[Path, ...], ...]:
        """Per shard ``k``, the files that hold it: its per-item array shards (or, for grouped sources, its
        sources' parts), plus ``shards/entries.<k>.json`` where the index is split by shard.

        Raises:
            DataError: the cache keeps no shards (a builder with neither item nor part arrays, or an old cache).
        """
        table = self._shard_table()
        if not table.get("arrays") and not table.get("first"):
            raise DataError(f"{self.folder}: the {self.builder.kind} cache keeps no shards (built before they were "
                            "introduced, or a builder without per-item arrays), so its items cannot be assigned to "
                            "ranks; rebuild it (delete the folder) or set train.shard_assignment=global")
        split = bool(json.loads(self._require(INDEX).read_text()).get("entries_in_shards"))
        files = []
        for k in range(_n_shards(table)):
            if table.get("first"):
                first, stop = table["first"][k], (table["first"] + [table["sources"]])[k + 1]
                held = [self.folder / PARTS / f"{i:05d}.{name}.npy" for i in range(first, stop)
                        for name in table["parts"]]
            else:
                held = [self.folder / SHARDS / f"{name}.{k:05d}.npy" for name in table["arrays"]]
            files.append(tuple(held) + ((self.folder / SHARDS / f"entries.{k:05d}.json",) if split else ()))
        return tuple(files)

    def source_shards(self) -> np.ndarray:
        """[kept sources] int64, the shard of each source of a grouped-sources cache (see the module docstring).

        Raises:
            DataError: the cache does not group its sources into shards.
        """
        table = self._shard_table()
        if not table.get("first"):
            raise DataError(f"{self.folder}: the {self.builder.kind} cache does not group its sources into shards; "
                            "rebuild it (delete the folder) or set train.shard_assignment=global")
        return np.repeat(np.arange(len(table["first"])), np.diff(table["first"] + [table["sources"]]))

    def shard_map(self, rows: Sequence[int] | np.ndarray) -> ShardMap:
        """Where the items at cache rows ``rows`` live: their shards and each shard's files.

        Args:
            rows: [N] the cache row of each dataset item; in a grouped-sources cache, the index of the kept source
                (entry) each item is read from (an fMRI window: its scan).

        Raises:
            DataError: the cache keeps no shards (see :meth:`shard_files`).
        """
        files, table = self.shard_files(), self._shard_table()
        rows = np.asarray(rows, dtype=np.int64)
        if table.get("first"):
            shard = np.searchsorted(np.asarray(table["first"]), rows, side="right") - 1
        else:
            shard = rows // int(table["shard_items"])
        return ShardMap(shard.astype(np.int64), files, str(self.folder))

    def array(self, name: str, mmap: bool = True) -> np.ndarray | ShardedArray:
        """A store array written by the builder's finalize.

        A per-item array (:attr:`CacheBuilder.item_arrays`) comes back as a :class:`ShardedArray` (rows read
        from memory-mapped shards), or with ``mmap=False`` whole in memory (for small per-item arrays such as
        labels); any other array is ``<name>.npy``, memory-mapped unless ``mmap`` is False.
        """
        table = self._shard_table()
        if name in table.get("arrays", {}):
            rows = ShardedArray(self.folder / SHARDS, name, table)
            return np.asarray(rows) if not mmap else rows
        return np.load(self._require(f"{name}.npy"), mmap_mode="r" if mmap else None)


def _write_shards(folder: Path, names: Sequence[str], shard_bytes: int) -> dict[str, Any]:
    """Cut finalize's per-item arrays ``<name>.npy`` in ``folder`` into ``shards/<name>.<k>.npy``; remove them.

    Returns:
        The shard table for ``index.json``: ``{"items", "shard_items", "arrays": {name: {"dtype", "row_shape"}}}``.
    """
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"per-item arrays of different lengths: {counts}")  # a builder's bug, not the user's
    n = next(iter(counts.values()))
    row_bytes = max(a[0:1].nbytes for a in arrays.values()) if n else 1
    per_shard = max(1, shard_bytes // max(row_bytes, 1))
    (folder / SHARDS).mkdir()
    for name, a in arrays.items():
        for k, start in enumerate(range(0, n, per_shard)):
            np.save(folder / SHARDS / f"{name}.{k:05d}.npy", np.ascontiguousarray(a[start:start + per_shard]))
    table = {name: {"dtype": a.dtype.str, "row_shape": list(a.shape[1:])} for name, a in arrays.items()}
    del arrays
    for name in names:
        (folder / f"{name}.npy").unlink()
    return {"items": n, "shard_items": per_shard, "arrays": table}


def _n_shards(table: dict[str, Any]) -> int:
    """Shards of a shard table: per-item shards (rows / shard_items) or groups of whole sources."""
    if "first" in table:
        return len(table["first"])
    return -(-int(table["items"]) // int(table["shard_items"]))


def _group_sources(folder: Path, entries: list[dict[str, Any]], names: Sequence[str],
                   shard_bytes: int) -> dict[str, Any]:
    """Group the kept sources (whole, in order) into shards of about ``shard_bytes`` of parts each; write each
    shard's entries to ``shards/entries.<k>.json``.

    Returns:
        The shard table for ``index.json``: ``{"sources", "first": [first source of each shard], "parts": names}``.
    """
    first, size = [], 0
    for i, e in enumerate(entries):
        n = sum((folder / PARTS / f"{e['key']}.{name}.npy").stat().st_size for name in names)
        if not first or size + n > shard_bytes:  # a new shard; a source larger than a shard stands alone
            first.append(i)
            size = 0
        size += n
    (folder / SHARDS).mkdir()
    for k, a in enumerate(first):
        b = (first + [len(entries)])[k + 1]
        (folder / SHARDS / f"entries.{k:05d}.json").write_text(json.dumps(entries[a:b], default=str))
    return {"sources": len(entries), "first": first, "parts": list(names)}


def _write_entries(folder: Path, entries: list[dict[str, Any]], rows: list[tuple[int, int] | None],
                   table: dict[str, Any]) -> None:
    """Write ``shards/entries.<k>.json``: the entries whose rows ``[first, first + n)`` fall in shard ``k``."""
    per = int(table["shard_items"])
    by_shard: list[list[dict[str, Any]]] = [[] for _ in range(-(-int(table["items"]) // per))]
    for entry, (first, n) in zip(entries, rows):  # type: ignore[misc]
        for k in range(first // per, (first + n - 1) // per + 1) if n else ():
            by_shard[k].append(entry)
    for k, listed in enumerate(by_shard):
        (folder / SHARDS / f"entries.{k:05d}.json").write_text(json.dumps(listed, default=str))


class ShardedArray:
    """The rows ``[items, *row_shape]`` of one per-item array, read from shards memory-mapped on first use.

    ``rows[i]`` maps shard ``i // shard_items`` (if not yet mapped) and returns row ``i`` as a read-only view;
    ``rows[indices]`` (a slice, a list, an index array) returns a new array of those rows. At most ``max_open``
    shards stay mapped (the least recently used is closed). ``np.asarray(rows)`` reads every shard (whole array
    in memory: meant for small per-item arrays). Pickles without its mapped shards (DataLoader workers).

    Args:
        folder: the cache's ``shards`` folder.
        name: the array's name.
        table: the index's shard table (see :func:`_write_shards`).
        max_open: shards mapped at once.
    """

    def __init__(self, folder: Path, name: str, table: dict[str, Any], max_open: int = 4) -> None:
        self.folder, self.name = Path(folder), name
        self.items, self.shard_items = int(table["items"]), int(table["shard_items"])
        spec = table["arrays"][name]
        self.dtype, self.row_shape = np.dtype(spec["dtype"]), tuple(spec["row_shape"])
        self.max_open = max_open
        self._open: dict[int, np.ndarray] = {}  # shard -> memmap, least recently used first
        self.opened: set[int] = set()  # every shard mapped so far (what this process has touched)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.items, *self.row_shape)

    @property
    def n_shards(self) -> int:
        return -(-self.items // self.shard_items)

    def __len__(self) -> int:
        return self.items

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k``, memory-mapped ([rows, *row_shape])."""
        if k in self._open:
            self._open[k] = self._open.pop(k)  # most recently used last
            return self._open[k]
        path = self.folder / f"{self.name}.{k:05d}.npy"
        try:
            mapped = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(f"{path}: shard {k} of the cache is missing; delete the cache folder "
                            f"{self.folder.parent} so that the next run rebuilds it") from None
        advise = getattr(getattr(mapped, "_mmap", None), "madvise", None)
        if advise is not None and hasattr(mmap, "MADV_RANDOM"):
            # rows are read in shuffled order: no read-around, or each row maps megabytes of its neighbours
            advise(mmap.MADV_RANDOM)
        if len(self._open) >= self.max_open:
            self._open.pop(next(iter(self._open)))
        self._open[k] = mapped
        self.opened.add(k)
        return mapped

    def _row(self, i: int) -> np.ndarray:
        if not -self.items <= i < self.items:
            raise IndexError(f"row {i} outside the {self.items} rows of {self.name}")
        i %= self.items
        return self.shard(i // self.shard_items)[i % self.shard_items]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._row(int(index))
        rows = np.arange(self.items)[index]
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        for j, i in enumerate(rows):
            out[j] = self._row(int(i))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([np.asarray(self.shard(k)) for k in range(self.n_shards)]) if self.items else \
            np.empty((0, *self.row_shape), self.dtype)
        return out.astype(dtype, copy=False) if dtype is not None else out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}
