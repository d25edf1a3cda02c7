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
                    plus whatever finalize adds
    report.json     {"fingerprint", "kind", "n_sources", "n_kept", "n_left_out", "n_noted",
                     "sources": [{"source", "status": "kept" | "left_out", "reason"?, "notes"?}]}
    parts/<key>.<name>.npy   arrays of each kept source (unless finalize combined and removed them)

Building once in a distributed run (rank 0 builds, the others wait) is done by
:func:`foundation.data.protocol.prepare_dataset`.
"""
from __future__ import annotations

import hashlib
import json
import logging
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
from foundation.errors import DataError

__all__ = ["CacheBuilder", "DataCache", "Part", "fingerprint", "path_signature", "announce", "INDEX", "REPORT", "PARTS",
           "SHOWN"]

log = logging.getLogger(__name__)

INDEX = "index.json"
REPORT = "report.json"
PARTS = "parts"
SHOWN = 5  # left-out sources whose reasons are logged; the report lists all


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
    """

    def __init__(self, folder: str | Path, builder: CacheBuilder) -> None:
        self.folder = Path(folder)
        self.builder = builder

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

    def prepare(self, sources: Sequence[Any]) -> dict[str, Any]:
        """Build the cache unless it is current; return the report (see the module docstring).

        Another process preparing the same folder is waited for (see :mod:`foundation.data.lock`); its cache is
        then reused when current. Sources left out are logged (:func:`announce`) on every call.

        Raises:
            DataError: no source could be cached (the message gives each reason); the old cache is kept.
        """
        sources = list(sources)
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
            entries, listed = [], []
            bar = tqdm(sources, desc=f"{b.kind} cache: reading {len(sources)} source(s) into {self.folder.name}",
                       unit="source", disable=len(sources) < 2, dynamic_ncols=True, mininterval=1.0, leave=False)
            for source in bar:
                name = b.source_name(source)
                try:
                    part = b.read_source(source)
                except DataError as err:
                    listed.append({"source": name, "status": "left_out", "reason": str(err)})
                    continue
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
            index = {"fingerprint": fp, "kind": b.kind, "version": b.version, "settings": b.settings(),
                     "entries": entries, **extra}
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
        """The cache's ``index.json``; with ``sources``, checked to be current for them.

        Args:
            sources: the sources the cache must hold, or a function listing them (called only once the
                cache is known to be complete, so a missing cache is reported as such).

        Raises:
            DataError: no complete cache, or (with ``sources``) a cache of other sources, settings or code.
        """
        index = json.loads(self._require(INDEX).read_text())
        if callable(sources):
            sources = sources()
        if sources is not None and index.get("fingerprint") != self.fingerprint(sources):
            raise DataError(f"{self.folder}: the {self.builder.kind} cache was built from other sources, settings or "
                            "code than the config asks for; run the dataset's prepare(config) to rebuild it")
        return index

    def report(self) -> dict[str, Any]:
        """The cache's ``report.json``."""
        return json.loads(self._require(REPORT).read_text())

    def part(self, key: str, name: str, mmap: bool = True) -> np.ndarray:
        """Array ``name`` of the kept source ``key`` (memory-mapped unless ``mmap`` is False)."""
        return np.load(self.folder / PARTS / f"{key}.{name}.npy", mmap_mode="r" if mmap else None)

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        """A combined store array ``<name>.npy`` written by the builder's finalize."""
        return np.load(self._require(f"{name}.npy"), mmap_mode="r" if mmap else None)
