"""The one demo switch: ``data.source: demo`` generates a modality's demo corpus instead of reading user data.

Every modality's data config has a ``source`` (a folder, a file or ``demo``) and a ``cache_dir``. With
``source: demo`` the modality's ``make_demo_corpus`` writes its corpus next to the cache
(:func:`demo_folder`) through :func:`make_once`: generated in a temporary folder, stamped with its
parameters, moved into place, and skipped when a corpus with the same parameters is already there. Runs
sharing the folder take turns (:func:`foundation.data.lock.folder_lock`): the second waits, then reuses it.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foundation.atomic import replace_folder
from foundation.data.lock import clear_stale_stages, folder_lock, stage_prefix
from foundation.errors import ConfigError

__all__ = ["DEMO", "is_demo", "check_source", "demo_folder", "source_path", "make_once", "STAMP"]

DEMO = "demo"
STAMP = "demo_corpus.json"


def is_demo(source: str) -> bool:
    """Whether a ``data.source`` asks for the generated demo corpus."""
    return source == DEMO


def check_source(source: str, key: str = "data.source") -> None:
    """Refuse an empty source (the old way of asking for the demo corpus).

    Raises:
        ConfigError: ``source`` is empty.
    """
    if not source:
        raise ConfigError(f"{key} is empty; give the folder (or file) of your data, or '{DEMO}' to generate the "
                          f"demo corpus ({key}: {DEMO})")


def demo_folder(cache_dir: str | Path) -> Path:
    """Where the demo corpus of a cache lives: a sibling ``<cache_dir>-demo`` (outside the replaceable cache)."""
    cache = Path(cache_dir)
    return cache.parent / f"{cache.name}-demo"


def source_path(source: str, cache_dir: str | Path, inside: str = "") -> Path:
    """The folder a ``data.source`` names: the demo corpus (``<cache_dir>-demo[/inside]``) or ``source`` itself.

    Args:
        source: the recipe's ``data.source``.
        cache_dir: the recipe's ``data.cache_dir``.
        inside: the data folder inside the demo corpus (e.g. ``csv_files``), when not its root.
    """
    if not is_demo(source):
        return Path(source)
    root = demo_folder(cache_dir)
    return root / inside if inside else root


def _matches(stamp: Path, want: Any) -> bool:
    return stamp.is_file() and json.loads(stamp.read_text()) == want


def make_once(root: str | Path, params: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Generate a corpus into ``root`` unless one with the same ``params`` is there; return ``root``.

    Args:
        root: the corpus folder (replaced as a whole when its parameters differ).
        params: the generator's parameters (JSON), stored in ``root/demo_corpus.json``.
        write: writes the corpus into the folder it is given (a staging folder).
    """
    root = Path(root)
    want = json.loads(json.dumps(params))
    stamp = root / STAMP
    if _matches(stamp, want):
        return root
    with folder_lock(root):
        if _matches(stamp, want):  # another run wrote it while this one waited for the lock
            return root
        clear_stale_stages(root)
        stage = Path(tempfile.mkdtemp(prefix=stage_prefix(root), dir=root.parent))
        try:
            print(f"generating the demo corpus {root} (first use; reused afterwards) ...", file=sys.stderr, flush=True)
            write(stage)
            (stage / STAMP).write_text(json.dumps(want))
            if not _matches(stamp, want):  # else a node without a shared lock wrote the same corpus meanwhile
                try:
                    replace_folder(stage, root)
                except OSError:
                    if not _matches(stamp, want):
                        raise
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
    return root
