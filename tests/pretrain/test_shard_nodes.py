"""A node without the raw corpus: 2 ranks under ``train.shard_assignment: rank``, each on a node that holds ONLY
its own cache shard files (plus ``index.json``, ``report.json``; for fMRI the window list's head) and none of the
source files, train and resume (``data.check_sources: auto`` trusts the recorded fingerprint and logs one line).

- tiny DeeperBrain with ``data.subjects`` (3 of 4 subjects): the filter is read from the index's subject runs, so
  no rank reads another rank's subject shard (which is not on its node);
- tiny SLIM-Brain: the scans' folder is gone, the labels table with it;
- the tiny ultrasound model: the CSVs and images are gone; the records come from the cache's table
  (``records.npy``) and the entry files of the rank's shards.

Each run stops after 2 steps and resumes on 2 ranks to step 4; the reads of both legs (recorded by the
``sitecustomize`` of ``test_shard_models.py``) are the sampler's order for the rank, within its shards. On one
machine, a changed recording is still caught by the default ``auto``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.config import load_recipe
from foundation.data.cache import INDEX, REPORT, SHARDS
from foundation.errors import DataError
from foundation.pretrain.distributed import free_port
from foundation.pretrain.shard_sampler import ShardLocalSampler
from tests.pretrain._launch import ROOT, env, losses, node_caches
from tests.pretrain.test_shard_models import _SITECUSTOMIZE, FMRI, ULTRASOUND, _build

pytestmark = pytest.mark.slow

EEG_RECIPE = ROOT / "foundation" / "recipes" / "deeperbrain-tiny.yaml"
EEG_MODULE, EEG_CLASS = "foundation.modalities.eeg.dataset", "EEGWindows"
WAIT_S = 300
NOTE = "is trusted (sources not listed or checked); set data.check_sources=always"


def _eeg_overrides(corpus: Path, cache: Path, *more: str) -> list[str]:
    return [f"data.source={corpus}", f"data.cache_dir={cache}", "train.shard_assignment=rank",
            "train.micro_batch_size=4", "train.warmup_steps=1", "train.keep_last=5", "train.progress_bar=false",
            "data.subjects=['01','03','04']", *more]


def _launch(recipe: Path, module: str, cls: str, out: Path, overrides: list[list[str]],
            extra: tuple[str, ...] = ()) -> list[str]:
    """Run 2 ranks, rank r with ``overrides[r]``, each recording its reads; return each rank's stderr."""
    port, procs = free_port(), []
    hook = out.parent / f"{out.name}-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    for rank in range(2):
        args = ["--recipe", str(recipe), "--output-dir", str(out), "--no-export"]
        for o in overrides[rank]:
            args += ["--set", o]
        e = env()
        e.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 PYTHONPATH=os.pathsep.join([str(hook), env()["PYTHONPATH"]]), SHARD_MODULE=module,
                 SHARD_CLASS=cls, SHARD_READS=str(out.parent / f"reads{rank}.txt"))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), *args, *extra], cwd=ROOT,
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = [p.communicate(timeout=WAIT_S) + (p.returncode,) for p in procs]
    for rank, (_, stderr, code) in enumerate(done):
        assert code == 0, f"rank {rank} exit {code}\n{stderr[-5000:]}"
    return [stderr for _, stderr, _ in done]


def _reads(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.is_file() else []


def _train_and_resume(recipe: Path, module: str, cls: str, overrides: list[list[str]], shard_map: Any, mb: int,
                      corpus: Path, tmp_path: Path) -> None:
    """2 steps on 2 ranks, then a resume on 2 ranks to step 4; both legs without the corpus."""
    assert not corpus.exists()
    out = tmp_path / "run"
    more = ["train.steps=4", "train.checkpoint_every=2"]
    first = _launch(recipe, module, cls, out, [o + more for o in overrides], extra=("--stop-after", "2"))
    leg1 = [_reads(tmp_path / f"reads{r}.txt") for r in range(2)]
    for r in range(2):
        (tmp_path / f"reads{r}.txt").unlink()
    second = _launch(recipe, module, cls, out, [o + more for o in overrides], extra=("--resume",))
    leg2 = [_reads(tmp_path / f"reads{r}.txt") for r in range(2)]
    for stderr in first + second:  # the note, once per cache object (prepare, then the dataset), one line each
        lines = [line for line in stderr.splitlines() if NOTE in line]
        assert lines and all(str(corpus) in line for line in lines), stderr[-3000:]
    two = [ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 2, r, batch=mb) for r in range(2)]
    for rank in range(2):
        two[rank].set_epoch(0)
        assert [len(leg1[rank]), len(leg2[rank])] == [2 * mb, 2 * mb]
        # the same order as one uninterrupted run: the sampler's stream of the rank, within its shards
        assert leg1[rank] + leg2[rank] == two[rank].stream(rank)[:4 * mb].tolist()
        assert set(shard_map.item_shard[leg1[rank] + leg2[rank]]) <= set(two[rank].shards)
    got = losses(out)
    assert sorted(got) == [1, 2, 3, 4] and all(np.isfinite(v) for v in got.values())


@pytest.fixture(scope="module")
def eeg(tmp_path_factory) -> dict[str, Any]:
    """The demo corpus, its cache in shards of 8 windows, each node's partial copy for the subject filter."""
    from foundation.modalities.eeg.dataset import EEGWindows, _cache
    from foundation.modalities.eeg.demo_corpus import DemoCorpusConfig, make_demo_corpus
    from foundation.modalities.eeg.reader import find_recordings

    root = tmp_path_factory.mktemp("shard-nodes-eeg")
    corpus, full = root / "corpus", root / "cache"
    make_demo_corpus(corpus, DemoCorpusConfig(n_subjects=4, blocks_per_class=2))
    config = load_recipe(str(EEG_RECIPE), _eeg_overrides(corpus, full)).data.config
    cache = _cache(config)
    cache.shard_bytes = 8 * 30 * 800 * 2  # windows [30 channels, 800 samples] float16: 8 rows a shard
    cache.prepare(lambda: find_recordings(corpus))
    dataset = EEGWindows(config)
    shard_map = dataset.shard_map()
    kept = set(np.asarray(dataset.subject_ids)[dataset.rows].tolist())
    assert kept == {dataset.subjects.index(s) for s in config.subjects} and len(dataset.rows) < len(dataset.labels)
    runs = ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 2, 0).runs
    out = {"root": root, "corpus": corpus, "full": full, "shard_map": shard_map, "config": config}
    for rank, node in enumerate(node_caches(full, [full / INDEX, full / REPORT], shard_map.files, runs, root)):
        out[f"node{rank}"] = node
    return out


def test_a_changed_recording_is_still_caught_on_one_machine(eeg):
    """Default ``auto`` with the corpus visible: a recording whose size or mtime changed makes the cache stale."""
    from foundation.modalities.eeg.dataset import EEGWindows

    assert eeg["config"].check_sources == "auto"
    recording = next(p for p in sorted(eeg["corpus"].rglob("*")) if p.is_file() and "sub-02" in str(p))
    st = recording.stat()
    os.utime(recording, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        with pytest.raises(DataError, match="built from other sources"):
            EEGWindows(eeg["config"])
    finally:
        os.utime(recording, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(EEGWindows(eeg["config"])) == len(eeg["shard_map"].item_shard)


def test_eeg_subject_filter_trains_and_resumes_on_nodes_with_only_their_shards_and_no_corpus(eeg, tmp_path):
    shard_map = eeg["shard_map"]
    for rank in range(2):  # some of the other rank's subject shards are absent from this node
        held = {p.name for p in (eeg[f"node{rank}"] / SHARDS).iterdir()}
        assert len([n for n in held if n.startswith("subjects.")]) < shard_map.n_shards
    moved = eeg["root"] / "corpus-on-another-machine"
    eeg["corpus"].rename(moved)
    try:
        overrides = [_eeg_overrides(eeg["corpus"], eeg[f"node{r}"]) for r in range(2)]
        _train_and_resume(EEG_RECIPE, EEG_MODULE, EEG_CLASS, overrides, shard_map, 4, eeg["corpus"], tmp_path)
    finally:
        moved.rename(eeg["corpus"])


def test_fmri_trains_and_resumes_on_nodes_with_only_their_shards_and_no_corpus(tmp_path_factory, tmp_path):
    from tests.pretrain.test_shard_models import _overrides

    data = _build(FMRI, tmp_path_factory.mktemp("shard-nodes-fmri"))
    shutil.rmtree(data["corpus"])  # the scans (and their labels table) live on another machine
    overrides = [list(_overrides(FMRI, data["corpus"], data[f"node{r}"])) for r in range(2)]
    _train_and_resume(FMRI.recipe, FMRI.module, FMRI.cls, overrides, data["shard_map"], FMRI.micro_batch,
                      data["corpus"], tmp_path)


def test_ultrasound_trains_and_resumes_on_nodes_with_only_their_shards_and_no_csvs_or_images(tmp_path_factory,
                                                                                             tmp_path):
    from tests.pretrain.test_shard_models import _overrides

    data = _build(ULTRASOUND, tmp_path_factory.mktemp("shard-nodes-us"))
    for rank in range(2):  # the other rank's entry files are absent from this node
        held = {p.name for p in (data[f"node{rank}"] / SHARDS).iterdir() if p.name.startswith("entries.")}
        assert 0 < len(held) < data["shard_map"].n_shards
    shutil.rmtree(data["corpus"].parent)  # the CSVs and the images live on another machine
    overrides = [list(_overrides(ULTRASOUND, data["corpus"], data[f"node{r}"])) for r in range(2)]
    _train_and_resume(ULTRASOUND.recipe, ULTRASOUND.module, ULTRASOUND.cls, overrides, data["shard_map"],
                      ULTRASOUND.micro_batch, data["corpus"], tmp_path)
    shard_items = data["dataset"].cache["images"].shard_items  # cache row r lies in shard r // shard_items
    for rank in range(2):  # every image of both legs' planned batches lies in the rank's shards
        rows = _reads(tmp_path / f"reads{rank}.txt.rows")
        assert rows and {r // shard_items for r in rows} <= set(data["runs"][rank])
