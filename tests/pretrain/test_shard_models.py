"""``train.shard_assignment: rank`` on tiny SLIM-Brain (fMRI) and the tiny ultrasound multi-task model, 2 ranks.

The same checks as the DeeperBrain test (``test_shard_resume.py``), per model: a small demo corpus is cached in a
few shards (shards shrunk from the shipped 64 MB, which hold the whole demo corpus); each of 2 ranks runs on a
node whose cache holds only its own shards (plus ``index.json``, ``report.json`` and, for fMRI, the window list's
head, for ultrasound the record table ``records.npy``); every rank's reads lie in its shards; 1 rank resumes (accumulation 2: the same global batch) and finishes
the epoch, every item read exactly once across the resume; a missing shard file stops the run with a
``DataError`` naming it. Rank processes are started the way a multi-node launcher does (``LOCAL_RANK=0``: one rank
per node); a ``sitecustomize`` on their path records every item index the dataset is asked for (and, for
ultrasound, every cache row a planned batch reads), so the reads are observed, not recomputed.

- fMRI: an item is a window of a scan; scans lie whole in one shard (grouped by the cache), so a window's shard is
  its scan's. 8 scans, shards of 2 scans, 3 windows per scan: 4 shards of 6 windows.
- ultrasound: an item is a planned batch; under the rank order its images are drawn from the rank's shards only
  (``UltrasoundDataset.use_shards``), the task sampling balanced within them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from foundation.config import load_recipe
from foundation.errors import DataError
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.distributed import free_port
from foundation.pretrain.engine import Engine
from foundation.pretrain.shard_sampler import ShardLocalSampler
from tests.pretrain._launch import ROOT, env, losses, node_caches

pytestmark = pytest.mark.slow

WAIT_S = 300
FIRST_STEPS = 2  # steps of the 2-rank leg before the resume

_SITECUSTOMIZE = '''
import importlib, os
if os.environ.get("SHARD_READS"):
    _cls = getattr(importlib.import_module(os.environ["SHARD_MODULE"]), os.environ["SHARD_CLASS"])
    _get = _cls.__getitem__
    def _logged(self, i):
        with open(os.environ["SHARD_READS"], "a") as f:
            f.write(f"{int(i)}\\n")
        return _get(self, i)
    _cls.__getitem__ = _logged
    if hasattr(_cls, "sample"):
        _sample = _cls.sample
        def _rows(self, j, *args, **kwargs):
            with open(os.environ["SHARD_READS"] + ".rows", "a") as f:
                f.write(f"{int(self.rows[j])}\\n")
            return _sample(self, j, *args, **kwargs)
        _cls.sample = _rows
'''


@dataclass
class Model:
    """One shipped model's tiny recipe, its dataset and how its corpus is made small and sharded."""

    recipe: Path
    module: str
    cls: str
    micro_batch: int
    more: tuple[str, ...]  # overrides shrinking the corpus

    def dataset_class(self) -> Any:
        return getattr(__import__(self.module, fromlist=[self.cls]), self.cls)


FMRI = Model(ROOT / "foundation" / "recipes" / "slim-brain-tiny.yaml", "foundation.modalities.fmri.dataset",
             "FMRIWindows", 2, ("data.demo_subjects=8",))
ULTRASOUND = Model(ROOT / "foundation" / "recipes" / "ultrasound-mtl-tiny.yaml",
                   "foundation.modalities.ultrasound.dataset", "UltrasoundDataset", 1,
                   ("data.demo_images_per_task=6", "data.batch_size=4"))


def _overrides(model: Model, corpus: Path, cache: Path, *more: str) -> tuple[str, ...]:
    return (f"data.source={corpus}", f"data.cache_dir={cache}", "train.shard_assignment=rank",
            f"train.micro_batch_size={model.micro_batch}", "train.warmup_steps=1", "train.keep_last=5",
            "train.progress_bar=false", *model.more, *more)


def _build(model: Model, root: Path) -> dict[str, Any]:
    """The demo corpus, its cache in small shards, and each node's partial copy (what every node needs plus the
    files of its rank's shards only)."""
    corpus, full = root / "corpus", root / "cache"
    config = load_recipe(str(model.recipe), list(_overrides(model, corpus, full))).data.config
    if model is FMRI:
        from foundation.modalities.fmri.dataset import FMRIWindows, _cache
        from foundation.modalities.fmri.demo_corpus import make_demo_corpus
        from foundation.modalities.fmri.reader import find_scans

        make_demo_corpus(corpus, config.demo_subjects, config.demo_frames, voxel_size=config.demo_voxel_size,
                         seed=config.seed)
        cache = _cache(config)
        scan = config.demo_frames * 24 ** 3 + 24 ** 3 + 2 * 128  # int8 volume + bool mask + .npy headers
        cache.shard_bytes = 2 * scan + 1000  # 2 scans a shard
        cache.prepare(find_scans(corpus))
        FMRIWindows.prepare(config)  # chooses the windows (the cache is current)
        store = cache.folder
        shared = [store / "index.json", store / "report.json", FMRIWindows.windows_file(config)]
    else:
        from foundation.modalities.ultrasound.dataset import UltrasoundDataset, _cache
        from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus
        from foundation.modalities.ultrasound.tasks import task_table

        make_demo_corpus(corpus, task_table(config.tasks, config.extra_tasks, "data"), config.demo_images_per_task,
                         config.demo_seed)
        config.source = str(corpus / "csv_files")
        cache = _cache(config)
        cache.shard_bytes = 16 * 64 * 64 * 3  # 16 images a shard
        cache.prepare(UltrasoundDataset._read(config))
        shared = [cache.folder / "index.json", cache.folder / "report.json", cache.folder / "records.npy"]
    dataset = model.dataset_class()(config)
    shard_map = dataset.shard_map()
    runs = ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 2, 0).runs
    out = {"root": root, "corpus": Path(config.source), "full": full, "shard_map": shard_map, "runs": runs,
           "dataset": dataset}
    for rank, node in enumerate(node_caches(full, shared, shard_map.files, runs, root)):
        out[f"node{rank}"] = node
    return out


@pytest.fixture(scope="module")
def fmri(tmp_path_factory) -> dict[str, Any]:
    data = _build(FMRI, tmp_path_factory.mktemp("shard-fmri"))
    assert data["shard_map"].n_shards == 4 and data["shard_map"].counts().tolist() == [6] * 4
    return data


@pytest.fixture(scope="module")
def ultrasound(tmp_path_factory) -> dict[str, Any]:
    data = _build(ULTRASOUND, tmp_path_factory.mktemp("shard-us"))
    assert data["shard_map"].n_shards >= 4, data["shard_map"].counts()
    return data


def _launch(model: Model, out: Path, caches: list[Path], corpus: Path, *more: str,
            extra: tuple[str, ...] = ()) -> None:
    """Run 2 ranks, rank r on ``caches[r]`` (its node's cache folder), each recording its reads."""
    port, procs = free_port(), []
    hook = out.parent / f"{out.name}-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    for rank, cache in enumerate(caches):
        args = ["--recipe", str(model.recipe), "--output-dir", str(out), "--no-export"]
        for o in _overrides(model, corpus, cache, *more):
            args += ["--set", o]
        e = env()
        e.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 PYTHONPATH=os.pathsep.join([str(hook), env()["PYTHONPATH"]]), SHARD_MODULE=model.module,
                 SHARD_CLASS=model.cls, SHARD_READS=str(out.parent / f"{out.name}-reads{rank}.txt"))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), *args, *extra], cwd=ROOT,
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=WAIT_S)
        done.append((p.returncode, stderr))
    for rank, (code, stderr) in enumerate(done):
        assert code == 0, f"rank {rank} exit {code}\n{stderr[-5000:]}"


def _reads(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.is_file() else []


def _run(model: Model, data: dict[str, Any], tmp_path: Path) -> None:
    shard_map, runs, mb = data["shard_map"], data["runs"], model.micro_batch
    for rank, run in enumerate(runs):  # a node holds its own shards' files, none of the other rank's
        held = {p.relative_to(data[f"node{rank}"]) for p in data[f"node{rank}"].rglob("*") if p.is_file()}
        mine = {p.relative_to(data["full"]) for k in run for p in shard_map.files[k]}
        theirs = {p.relative_to(data["full"]) for k in runs[1 - rank] for p in shard_map.files[k]}
        assert mine <= held and not held & theirs

    # the steps to the end of the epoch: 2 steps on 2 ranks, then 1 rank at accumulation 2
    two = [ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 2, r, batch=mb) for r in range(2)]
    one = ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 1, 0, batch=mb)
    two[0].set_epoch(0)
    one.set_epoch(0, base=two[0].progress(FIRST_STEPS * mb))
    steps = FIRST_STEPS + -(-one.length // (2 * mb))  # the last step may run into the next epoch
    more = (f"train.steps={steps}", f"train.checkpoint_every={FIRST_STEPS}")

    out = tmp_path / "run"
    _launch(model, out, [data["node0"], data["node1"]], data["corpus"], *more, extra=("--stop-after", "2"))
    ranks = [_reads(tmp_path / f"run-reads{r}.txt") for r in range(2)]
    assert [len(r) for r in ranks] == [FIRST_STEPS * mb] * 2
    for rank, read in enumerate(ranks):  # in the rank's shards, in the sampler's order
        assert set(shard_map.item_shard[read]) <= set(two[rank].shards)
        assert read == two[rank].stream(rank)[:FIRST_STEPS * mb].tolist()
    if model is ULTRASOUND:  # every image a planned batch read lies in the rank's shards
        cache = data["dataset"]._cache
        for rank in range(2):
            rows = _reads(tmp_path / f"run-reads{rank}.txt.rows")
            assert len(rows) == FIRST_STEPS * mb * data["dataset"].config.batch_size
            assert set(cache.shard_map(rows).item_shard) <= set(two[rank].shards)

    # 2 -> 1: this process is the one rank, on the full cache; its reads are recorded by patching the dataset
    cls, resumed = model.dataset_class(), []
    get = cls.__getitem__

    def logged(self, i):
        resumed.append(int(i))
        return get(self, i)

    recipe = load_recipe(str(model.recipe), list(_overrides(model, data["corpus"], data["full"], *more,
                                                            "deepspeed.gradient_accumulation_steps=2")))
    cls.__getitem__ = logged
    try:
        Engine(recipe, out, resume=True).run()
    finally:
        cls.__getitem__ = get
    n, real = len(shard_map.item_shard), one.remaining(0)
    assert real == n - 2 * FIRST_STEPS * mb
    segment = resumed[:one.length]
    assert sorted(ranks[0] + ranks[1] + segment[:real]) == list(range(n))  # every item of the epoch once
    assert set(segment[real:]) <= set(segment[:real])  # padding re-reads the segment's own items
    assert len(resumed) == (steps - FIRST_STEPS) * 2 * mb
    assert CheckpointDir(out / "checkpoints").latest() == f"step_{steps:08d}"
    got = losses(out)
    assert sorted(got) == list(range(1, steps + 1)) and all(np.isfinite(v) for v in got.values())

    # a shard file of the rank missing: refused before training, the file named
    partial = tmp_path / "partial"
    shutil.copytree(data["full"], partial)
    gone = shard_map.files[1][0]
    (partial / gone.relative_to(data["full"])).unlink()
    recipe = load_recipe(str(model.recipe), list(_overrides(model, data["corpus"], partial, "train.steps=1")))
    with pytest.raises(DataError, match=rf"{gone.name.replace('.', r'[.]')}: missing on this node .*rank 0 of 1 "
                                        rf"reads shards 0-{shard_map.n_shards - 1}"):
        Engine(recipe, tmp_path / "no-run").run()


def test_fmri_ranks_read_their_shards_and_a_resume_on_one_rank_reads_every_window_once(fmri, tmp_path):
    _run(FMRI, fmri, tmp_path)


def test_ultrasound_ranks_read_their_shards_and_a_resume_on_one_rank_reads_every_batch_once(ultrasound, tmp_path):
    _run(ULTRASOUND, ultrasound, tmp_path)


def test_ultrasound_task_sampling_is_balanced_within_each_ranks_shards(ultrasound):
    """Under the rank order a rank plans its batches from the records of its own shards, with the task
    probabilities of its own task counts (uniform: 1 / its tasks); a task whose records straddle the cut is drawn
    by both ranks; over the job a task's share of the images is the mean of its share on each rank."""
    from foundation.modalities.ultrasound.dataset import UltrasoundDataset
    from foundation.modalities.ultrasound.sampler import task_probabilities

    config, runs, full = ultrasound["dataset"].config, ultrasound["runs"], ultrasound["dataset"]
    record_shard = full._cache.shard_map(full.rows).item_shard  # [records] the shard of each record's image
    shares, tasks_of = [], []
    for run in runs:
        ds = UltrasoundDataset(config)
        ds.use_shards(run)
        mine = [j for j in range(len(full.records)) if record_shard[j] in run]
        counts: dict[str, int] = {}
        for j in mine:
            counts[full.records[j].task_id] = counts.get(full.records[j].task_id, 0) + 1
        assert set(ds.planner.tasks) == set(counts) and len(ds) == len(full)  # the item count stays the corpus's
        want = task_probabilities(counts, config.sampling, config.temperature)
        assert ds.planner.probs == pytest.approx(want)
        if config.sampling == "uniform":
            assert set(np.round(list(ds.planner.probs.values()), 12)) == {round(1 / len(counts), 12)}
        gen = torch.Generator().manual_seed(0)
        drawn = [j for _ in range(3000) for j in ds.planner.plan(gen)]
        assert set(drawn) <= set(mine)  # every image of every planned batch lies in the rank's shards
        seen = {t: 0 for t in counts}
        for j in drawn:
            seen[full.records[j].task_id] += 1
        for t, p in want.items():  # each task's frequency within 5 standard errors of its probability
            assert abs(seen[t] / len(drawn) - p) <= 5 * np.sqrt(p * (1 - p) / len(drawn) * config.batch_size), t
        shares.append(({t: seen.get(t, 0) for t in full.by_task}, len(drawn), want))
        tasks_of.append(set(counts))
    assert tasks_of[0] | tasks_of[1] == set(full.by_task)  # every task is drawn by some rank
    assert tasks_of[0] & tasks_of[1], "no task straddles the cut: pick another corpus size"
    total = shares[0][1] + shares[1][1]  # both ranks plan equal numbers of images per step
    for t in full.by_task:  # over the job, a task's share is the mean of its probability on each rank
        p = (shares[0][2].get(t, 0.0) + shares[1][2].get(t, 0.0)) / 2
        got = (shares[0][0][t] + shares[1][0][t]) / total
        assert abs(got - p) <= 5 * np.sqrt(p * (1 - p) / total * config.batch_size), (t, got, p)


def test_fmri_windows_read_only_the_shards_of_the_windows_asked_for(fmri):
    """The fMRI dataset reads a shard's entries, window starts and masks when one of its windows is first read:
    constructing it and reading shard 2's windows touches no other shard, and its describe() reads none."""
    from foundation.modalities.fmri.dataset import FMRIWindows

    full = fmri["dataset"]
    ds = FMRIWindows(full.config)
    assert ds._shards == {} and ds._fg == {} and "8 fMRI scans" in ds.describe() and ds._shards == {}
    mine = np.flatnonzero(fmri["shard_map"].item_shard == 2)
    got = [ds[int(i)] for i in mine]
    assert set(ds._shards) == {2} and set(ds._fg) == {4, 5}  # shard 2 holds scans 4 and 5, whole
    want = [full.items[int(i)] for i in mine]  # the whole-corpus item list, read through every shard
    assert [(int(g["scan"]), int(g["start"])) for g in got] == want
    assert len(full.items) == len(ds) == 24 and len(full.scans) == 8
