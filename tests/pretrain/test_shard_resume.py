"""``train.shard_assignment: rank`` on the tiny DeeperBrain recipe with 2 ranks: each node holds only its ranks'
shards, and a resume continues exactly on the same rank count and reads every unread window once on another.

A small demo corpus is cached once with shards of 8 windows (the shipped shards are 64 MB, more than the whole
demo corpus), so 2 ranks own 3 shards each. Rank processes are started the way a multi-node launcher does
(``RANK``/``WORLD_SIZE``, ``LOCAL_RANK=0``: one rank per node); a ``sitecustomize`` on their path records every
window index the dataset is asked for, so the reads are observed, not recomputed.
"""
from __future__ import annotations

import json
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
from foundation.errors import CheckpointError, DataError
from foundation.modalities.eeg.dataset import EEGWindows, _cache
from foundation.modalities.eeg.demo_corpus import DemoCorpusConfig, make_demo_corpus
from foundation.modalities.eeg.reader import find_recordings
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.distributed import free_port
from foundation.pretrain.engine import Engine
from foundation.pretrain.shard_sampler import ShardLocalSampler
from tests.pretrain._launch import ROOT, env, losses, node_caches

pytestmark = pytest.mark.slow

RECIPE = ROOT / "foundation" / "recipes" / "deeperbrain-tiny.yaml"
SHARD_ROWS = 8
WAIT_S = 300

_SITECUSTOMIZE = '''
import os
if os.environ.get("SHARD_READS"):
    from foundation.modalities.eeg import dataset as _dataset
    _get = _dataset.EEGWindows.__getitem__
    def _logged(self, i):
        with open(os.environ["SHARD_READS"], "a") as f:
            f.write(f"{int(i)}\\n")
        return _get(self, i)
    _dataset.EEGWindows.__getitem__ = _logged
'''


def _overrides(corpus: Path, cache: Path, *more: str) -> tuple[str, ...]:
    return (f"data.source={corpus}", f"data.cache_dir={cache}", "train.shard_assignment=rank",
            "train.micro_batch_size=4", "train.warmup_steps=1", "train.keep_last=5", "train.progress_bar=false", *more)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The demo corpus, its cache in shards of 8 windows, and each node's partial copy (index, report and the
    shards of its rank only)."""
    root = tmp_path_factory.mktemp("shard-resume")
    corpus, full = root / "corpus", root / "cache"
    make_demo_corpus(corpus, DemoCorpusConfig(n_subjects=4, blocks_per_class=2))
    config = load_recipe(str(RECIPE), list(_overrides(corpus, full))).data.config
    cache = _cache(config)
    cache.shard_bytes = SHARD_ROWS * 30 * 800 * 2  # windows [30 channels, 800 samples] float16: 8 rows a shard
    cache.prepare(find_recordings(corpus))
    shard_map = EEGWindows(config).shard_map()
    assert shard_map.n_shards == 6, shard_map.counts()
    assert "entries" not in cache.head() and cache.head()["entries_in_shards"]  # the index is split by shard
    runs = ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 2, 0).runs
    out = {"root": root, "corpus": corpus, "full": full}
    for rank, node in enumerate(node_caches(full, [full / INDEX, full / REPORT], shard_map.files, runs, root)):
        out[f"node{rank}"] = node
    return out


def _launch(out: Path, caches: list[Path], corpus: Path, *more: str, extra: tuple[str, ...] = (),
            record: bool = False) -> list[subprocess.CompletedProcess]:
    """Run 2 ranks, rank r on ``caches[r]`` (its node's cache folder); return each rank's finished process."""
    port, procs = free_port(), []
    hook = out.parent / f"{out.name}-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    for rank, cache in enumerate(caches):
        args = ["--recipe", str(RECIPE), "--output-dir", str(out), "--no-export"]
        for o in _overrides(corpus, cache, *more):
            args += ["--set", o]
        e = env()
        e.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 PYTHONPATH=os.pathsep.join([str(hook), env()["PYTHONPATH"]]))
        if record:
            e["SHARD_READS"] = str(out.parent / f"{out.name}-reads{rank}.txt")
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), *args, *extra], cwd=ROOT,
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=WAIT_S)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    for rank, p in enumerate(done):
        assert p.returncode == 0, f"rank {rank} exit {p.returncode}\n{p.stderr[-5000:]}"
    return done


def _reads(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.is_file() else []


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted 2-rank run of 6 steps (checkpoints every 2), each rank on its node's partial cache, the
    reads recorded: both resume tests start from its step-2 checkpoint (one launch fewer than a run per test)."""
    root = tmp_path_factory.mktemp("straight")
    out = root / "run"
    _launch(out, [data["node0"], data["node1"]], data["corpus"], "train.steps=6", "train.checkpoint_every=2",
            record=True)
    return {"out": out, "reads": [_reads(root / f"run-reads{r}.txt") for r in range(2)], "losses": losses(out)}


def _from_step_2(straight: dict[str, Any], to: Path) -> Path:
    """A copy of the uninterrupted run as it was after step 2 (its later checkpoints and metrics dropped)."""
    shutil.copytree(straight["out"], to)
    (to / "checkpoints" / "latest").write_text("step_00000002")
    for tag in ("step_00000004", "step_00000006"):
        shutil.rmtree(to / "checkpoints" / tag)
    metrics = to / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line)["step"] <= 2))
    return to


def test_each_node_holds_its_shards_only_and_a_resume_on_one_rank_reads_every_window_once(data, straight, tmp_path):
    """2 ranks, each on a node whose cache holds only its own 3 of the 6 shards (arrays and index entries), train 2
    steps; 1 rank resumes (accumulation 2: the same global batch) and finishes the epoch: every window is read
    exactly once."""
    for rank in range(2):  # the other rank's shards, entries included, are not on this node
        names = sorted(p.name for p in (data[f"node{rank}"] / SHARDS).iterdir())
        assert len(names) == 3 * 7 and sum(n.startswith("entries.") for n in names) == 3, names
    ranks = [r[:8] for r in straight["reads"]]  # 2 steps x micro-batch 4 on each rank
    assert [len(r) for r in straight["reads"]] == [24, 24]

    # the windows each rank read lie in its own shards (the other node's files are not there: reading one fails)
    recipe = load_recipe(str(RECIPE), list(_overrides(data["corpus"], data["full"], "train.steps=6",
                                                      "deepspeed.gradient_accumulation_steps=2")))
    shard_map = EEGWindows(recipe.data.config).shard_map()
    two = [ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 2, r, batch=4) for r in range(2)]
    for rank, read in enumerate(straight["reads"]):
        assert set(shard_map.item_shard[read]) <= set(two[rank].shards)
        assert read[:8] == two[rank].stream(rank)[:8].tolist()  # the engine reads in the sampler's order

    # 2 -> 1: this process is the one rank, on the full cache; its reads are recorded by patching the dataset
    out = _from_step_2(straight, tmp_path / "run")
    resumed: list[int] = []
    get = EEGWindows.__getitem__

    def logged(self, i):
        resumed.append(int(i))
        return get(self, i)

    EEGWindows.__getitem__ = logged
    try:
        Engine(recipe, out, resume=True).run()
    finally:
        EEGWindows.__getitem__ = get
    n = len(shard_map.item_shard)
    ckpts = CheckpointDir(out / "checkpoints")
    # the one-rank segment: the windows not read before, then padding to a whole micro-batch
    one = ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, 1, 0, batch=4)
    saved = two[0]
    saved.set_epoch(0)
    one.set_epoch(0, base=saved.progress(8))
    real = one.remaining(0)
    assert real == n - 16
    segment = resumed[:one.length]
    assert sorted(ranks[0] + ranks[1] + segment[:real]) == list(range(n))  # every window of the epoch once
    assert set(segment[real:]) <= set(segment[:real])  # padding re-reads the segment's own windows
    assert len(resumed) == 4 * 2 * 4  # steps 3-6 at accumulation 2
    assert ckpts.latest() == "step_00000006"
    assert all(np.isfinite(v) for v in losses(out).values()) and sorted(losses(out)) == list(range(1, 7))


def test_resume_on_the_same_rank_count_repeats_the_uninterrupted_losses(data, straight, tmp_path):
    """The uninterrupted run resumed at step 2 on 2 ranks (each node on its partial cache) repeats its losses and
    its reads of steps 3-6."""
    chain = _from_step_2(straight, tmp_path / "chain")
    _launch(chain, [data["node0"], data["node1"]], data["corpus"], "train.steps=6", "train.checkpoint_every=2",
            extra=("--resume",), record=True)
    got, want = losses(chain), straight["losses"]
    assert sorted(got) == list(range(1, 7))
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in range(3, 7))
    print(f"largest relative loss difference, same rank count: {worst:.3g}")
    assert worst <= 1e-6
    again = [_reads(tmp_path / f"chain-reads{r}.txt") for r in range(2)]
    assert again == [r[8:] for r in straight["reads"]]  # the same windows in the same order after the resume


def test_a_missing_shard_file_and_a_changed_order_are_refused_by_name(data, tmp_path):
    """In this process, one rank: a cache lacking a shard file of the rank stops before training with the file
    named; a rank-order checkpoint resumed under the global order is refused."""
    partial = tmp_path / "partial"
    shutil.copytree(data["full"], partial)
    (partial / SHARDS / "stats.00004.npy").unlink()
    recipe = load_recipe(str(RECIPE), list(_overrides(data["corpus"], partial, "train.steps=1")))
    with pytest.raises(DataError, match=r"stats\.00004\.npy: missing on this node .*rank 0 of 1 reads shards 0-5"):
        Engine(recipe, tmp_path / "no-run").run()

    out = tmp_path / "run"
    Engine(load_recipe(str(RECIPE), list(_overrides(data["corpus"], data["full"], "train.steps=2"))), out,
           stop_after=1).run()
    glob = load_recipe(str(RECIPE), list(_overrides(data["corpus"], data["full"], "train.steps=2",
                                                    "train.shard_assignment=global")))
    with pytest.raises(CheckpointError, match="written with train.shard_assignment=rank, resumed with global.*"
                                              "--set train.shard_assignment=rank"):
        Engine(glob, out, resume=True).run()
