"""Start-up of the ultrasound dataset with and without the source walk, against corpus size (issue 19).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_us_startup.py                 # 8, 16, 32, 64 images per task
    PYTHONPATH=. .venv/bin/python benchmarks/bench_us_startup.py --per-task 8 16 --repeats 5

The demo corpus of all 27 challenge tasks (images of 40-72 px, cached at 64 x 64 in shards of 64 images) is
generated at each ``--per-task`` size, its cache built once; then :class:`~foundation.modalities.ultrasound.dataset.
UltrasoundDataset` (the ``ultrasound-csv`` dataset every rank opens before training, split ``train``) is opened
``--repeats`` times per mode, the modes interleaved so that load changes hit both alike:

- ``always`` (or ``auto`` where the CSV folder is visible): every CSV read and validated, every image and mask
  stat-ed, the fingerprint hashed and compared, then the records taken from the cache's table;
- ``never`` (or ``auto`` on a node without the CSVs): the recorded fingerprint trusted (settings and code compared),
  the records taken from the cache's table (``records.npy``), no CSV or image touched.

It prints the median seconds of each, their ratio and the Python heap peak of one open (``tracemalloc``), and, for
the largest size, the entry files a rank reads when it samples from one shard (no other shard's file is opened).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

from foundation.modalities.ultrasound.dataset import (
    UltrasoundDataset,
    UltrasoundDatasetConfig,
    _cache,
)
from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus
from foundation.modalities.ultrasound.tasks import task_table


def _open(config: UltrasoundDatasetConfig) -> tuple[float, UltrasoundDataset]:
    t0 = time.perf_counter()
    ds = UltrasoundDataset(config)
    return time.perf_counter() - t0, ds


def _peak_kib(config: UltrasoundDatasetConfig) -> float:
    tracemalloc.start()
    UltrasoundDataset(config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", type=int, nargs="+", default=[8, 16, 32, 64], help="images per task")
    parser.add_argument("--repeats", type=int, default=7, help="opens per mode and size (median reported)")
    args = parser.parse_args()
    logging.getLogger("foundation.data.cache").setLevel(logging.ERROR)  # the trust note, once per open
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-us-startup-") as tmp:
        for n in args.per_task:
            root = Path(tmp) / f"x{n}"
            csv_dir = make_demo_corpus(root / "corpus", task_table(()), images_per_task=n, seed=0, min_size=40,
                                       max_size=72, dicom_backgrounds=False)
            base = UltrasoundDatasetConfig(source=str(csv_dir), image_size=64, batch_size=8,
                                           cache_dir=str(root / "cache"))
            cache = _cache(base)
            cache.shard_bytes = 64 * 64 * 64 * 3  # 64 images a shard
            report = cache.prepare(UltrasoundDataset._read(base))
            times: dict[str, list[float]] = {"always": [], "never": []}
            configs = {m: dataclasses.replace(base, check_sources=m) for m in times}
            for _ in range(args.repeats):
                for mode, cfg in configs.items():
                    times[mode].append(_open(cfg)[0])
            peaks = {m: _peak_kib(c) for m, c in configs.items()}
            med = {m: statistics.median(v) for m, v in times.items()}
            _, ds = _open(configs["never"])
            n_shards = ds.shard_map().n_shards
            ds.use_shards([0])
            seen = sorted({j for pool in ds.by_task.values() for j in pool})
            for j in seen:
                ds.record(j)
            rows.append((n, report["n_kept"], n_shards, med["always"], med["never"], peaks["always"],
                         peaks["never"], len(ds._entries)))
    print("\n| images/task | records | shards | with walk ms | without ms | with / without | heap peak with KiB "
          "| without KiB | entry files read (rank on shard 0) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, recs, shards, a, b, pa, pb, read in rows:
        print(f"| {n} | {recs} | {shards} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.1f} | {pa:.0f} | {pb:.0f} "
              f"| {read} of {shards} |")
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())


if __name__ == "__main__":
    main()
