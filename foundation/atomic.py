"""Atomic writes: every file the suite writes appears whole or not at all.

Each writer writes to a temporary name in the target's folder, flushes, then renames over the target
(``os.replace`` is atomic on POSIX within one file system), so a crash mid-write never leaves a truncated
file and never loses the previous version. Folders are built in a temporary sibling and moved into place.

Usage::

    atomic_write_json(out / "metrics.json", result)
    with atomic_path(out / "head.safetensors") as tmp:
        save_file(state, str(tmp))
    with staged_folder(out / "adapter") as tmp:      # files moved in one by one, others kept
        ...
    replace_folder(new_export, out / "export")       # the old folder is removed only afterwards
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "staged_folder",
           "replace_folder"]


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for any writer; rename it onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffix (``.tmp-<id>.png``), so writers that pick a format from the
    suffix (matplotlib, nibabel) still do. On an error the temporary file is removed and ``path`` is untouched.

    Args:
        path: the final file.
        fsync: flush the file to disk before the rename (checkpoint markers, where a power loss matters).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, fsync: bool = False) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n", fsync=fsync)


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``folder``; on success move each file into ``folder`` by rename.

    Files already in ``folder`` that the new save does not write are kept; every written file appears
    atomically, so a crash never leaves a half-written weights file. On an error nothing is moved.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                dest = target / path.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the complete folder ``new`` to ``target``; an existing ``target`` is removed only afterwards.

    If the final rename fails the old ``target`` is put back, so there is always one complete folder.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return target
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)
    return target
