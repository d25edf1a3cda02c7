"""A process of the concurrency tests: prepares a shared toy cache and demo corpus, prints what it read.

Usage: ``python -m tests.data._race_worker SRC CACHE CORPUS LOG GO`` (waits until the file GO exists, so that
both processes start their prepare at the same moment).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from foundation.data.cache import CacheBuilder, DataCache, Part
from foundation.data.demo import make_once


class SlowBuilder(CacheBuilder):
    """Each source is a text file of numbers; reading one takes 0.2 s and is logged to LOG."""

    kind = "toy"

    def __init__(self, log: Path) -> None:
        self.log = log

    def settings(self) -> dict[str, Any]:
        return {}

    def read_source(self, source: Path) -> Part:
        with self.log.open("a") as fh:
            fh.write(f"read {os.getpid()} {source.name}\n")
        time.sleep(0.2)
        return Part({"x": np.asarray([float(v) for v in source.read_text().split()], np.float32)})


def write_corpus(log: Path):
    def write(folder: Path) -> None:
        with log.open("a") as fh:
            fh.write(f"corpus {os.getpid()}\n")
        for i in range(4):
            time.sleep(0.1)
            (folder / f"tmp-sub-{i:02d}_eeg.txt").write_text(f"{i} {i + 1}")
    return write


def main(src: str, cache: str, corpus: str, log: str, go: str) -> None:
    while not Path(go).exists():
        time.sleep(0.005)
    root = make_once(corpus, {"n": 4}, write_corpus(Path(log)))
    texts = {p.name: p.read_text() for p in sorted(root.glob("*.txt"))}
    dc = DataCache(cache, SlowBuilder(Path(log)))
    report = dc.prepare(sorted(Path(src).glob("*.txt")))
    arrays = [dc.part(e["key"], "x").tolist() for e in dc.index()["entries"]]
    print(json.dumps({"corpus": texts, "arrays": arrays, "kept": report["n_kept"]}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
