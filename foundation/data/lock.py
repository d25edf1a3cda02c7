"""A lock file beside a shared folder, so concurrent runs build a cache or corpus once and then share it.

Two jobs of a sweep launched with the same ``data.cache_dir`` prepare the same cache at the same moment.
:func:`folder_lock` makes the second one wait until the first has finished, after which it finds the cache
current and reuses it. The lock is ``fcntl.flock`` on ``.<name>.lock`` in the folder's parent:

- the kernel releases a flock when its process dies (``kill -9`` included), so a lock left by a killed run is
  never held: the lock file that remains is stale and the next run takes it at once;
- the holder writes ``pid@host`` into the lock file, so a waiting run can say whom it waits for, and staging
  folders carry the pid of the process that made them (:func:`stage_prefix`), so those a killed run left
  behind are recognised and removed (:func:`clear_stale_stages`);
- flock works across processes on one machine and on NFSv4 / Lustre mounts that support POSIX locks; on a
  file system without locks the lock is skipped with a warning and the staged rename keeps each folder whole.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foundation.errors import DataError

__all__ = ["folder_lock", "lock_path", "stage_prefix", "clear_stale_stages"]

log = logging.getLogger(__name__)

_HOST = socket.gethostname()
_HELD: dict[str, tuple[threading.RLock, list[int]]] = {}  # lock file -> (thread lock, [depth]) in this process
_GUARD = threading.Lock()


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.lock`` (outside the folder, which is replaced whole)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def stage_prefix(folder: str | Path) -> str:
    """Prefix of the staging folders of ``folder`` made by this process: ``.<name>.build-<pid>@<host>-``."""
    return f".{Path(folder).name}.build-{os.getpid()}@{_HOST}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def clear_stale_stages(folder: str | Path) -> list[Path]:
    """Remove staging folders of ``folder`` left by processes of this host that no longer run; return them.

    Call it while holding :func:`folder_lock`: a live process of this host that is building holds the lock,
    so a stage of a dead pid can only be debris of a killed run.
    """
    folder = Path(folder)
    removed = []
    if not folder.parent.is_dir():
        return removed
    head = f".{folder.name}.build-"
    for stage in folder.parent.glob(f"{head}*"):
        owner = stage.name[len(head):].split("-", 1)[0]
        pid, _, host = owner.partition("@")
        if host != _HOST or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(stage, ignore_errors=True)
        removed.append(stage)
    if removed:
        log.warning("removed %d staging folder(s) of %s left by killed runs: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed


@contextmanager
def folder_lock(folder: str | Path, timeout: float = 6 * 3600.0, poll: float = 0.2) -> Iterator[Path]:
    """Hold the lock of ``folder`` (waiting for another process that holds it); yield the lock file's path.

    Re-entrant within a process: a nested call for the same folder (a build that prepares the same cache
    again) does not wait for itself; threads of one process take turns.

    Args:
        folder: the shared folder (a cache or a demo corpus); its parent is created.
        timeout: seconds to wait for another holder before giving up.
        poll: seconds between attempts while waiting.

    Raises:
        DataError: another process held the lock for longer than ``timeout``.
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _GUARD:
        local, depth = _HELD.setdefault(str(path.resolve()), (threading.RLock(), [0]))
    with local:
        depth[0] += 1
        try:
            if depth[0] > 1:
                yield path
            else:
                with _flock(path, folder, timeout, poll):
                    yield path
        finally:
            depth[0] -= 1


@contextmanager
def _flock(path: Path, folder: str | Path, timeout: float, poll: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("%s: the file system does not support locks; concurrent runs sharing %s may build "
                                "it twice (each build is still staged and renamed whole)", path, folder)
                    break
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            holder = _holder(path)
            if not told:
                log.info("waiting for %s (held by %s) to finish preparing %s", path, holder or "another run", folder)
                told = True
            if time.monotonic() - start > timeout:
                raise DataError(f"{path}: held by {holder or 'another run'} for more than {timeout:.0f} s while "
                                f"preparing {folder}; if that run is gone (another host), delete the lock file")
            time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{_HOST}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
