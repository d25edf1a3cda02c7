"""Per-step cost of the shipped tiny recipes, the code before issue 16 against the current code (issue 16).

Commands (one thread; the old tree is a git worktree of the commit before the issue, outside the repo):

    git worktree add --detach /work/scratch-16/old b45ef54
    python benchmarks/bench_step.py --old /work/scratch-16/old --workdir /work/scratch-16/run \\
        --write /work/scratch-16/bench_step.md

    --parts steps,act,kan   which tables (default these three)
    --parts full            the full recipes' geometry at micro-batch 1 (--full-recipes deeperbrain,slim-brain,...)
    --rounds N              interleaved rounds (default 5); --reps N steps timed per round (default 5)

Part ``steps``: for each tiny recipe two long-lived worker processes are started, one importing the old tree and one
this tree (by ``PYTHONPATH``), each with ``torch.set_num_threads(1)``; the parent feeds them commands over stdin and
alternates old, new, old, new... so the machine's load falls on both alike. Both build the recipe's model and
objective (seed 0) and load one real batch of the recipe's demo data (built once by the parent, saved with
``torch.save`` and read with ``weights_only=True``). Each figure is the median over rounds of the median over the
steps of a round. Measures:

- optimizer step: ``opt.step()`` alone with fixed random gradients (old: AdamW's single-tensor path over the
  unmerged groups; new: fused AdamW over merged groups);
- bare loop: ``zero_grad``, ``module(batch)``, ``backward``, ``opt.step()`` (each step reseeds torch's RNG with its
  index, so old and new draw the same masks);
- compiled: the new tree's step with ``TrainModule.compile_step()`` (compile time excluded, reported apart);
- engine: ``deepspeed.initialize`` with ZeRO stage 0 (and the recipe's own stage) in one process, forward +
  backward + step through DeepSpeed, against the bare loop of the same worker (alternating step by step), and
  against the bare loop with the recipe's gradient clipping (``clip_grad_norm_``), which DeepSpeed also does.

Part ``full``: the full recipes (:data:`FULL`: their model and input geometry at micro-batch 1, a small generated
demo corpus), eager only: the bare-loop step and the optimizer step, old against new, as above.

Part ``act``: every activation of ours fwd+bwd on tokens [16, 128, 512] against ``nn.GELU`` in the same worker,
eager, eager with ``fused=True`` (new tree only) and ``torch.compile``-d; an old-tree worker and a new-tree worker
alternate round by round (``--old`` any earlier tree, e.g. a worktree of the commit before the activation round;
``--act-no-old`` for the new tree alone); each figure is the median over rounds of the ratio of the minima over a
round's ``--reps`` calls. E.g.:

    python benchmarks/bench_step.py --old /work/scratch-16a/old --workdir /work/scratch-16a/run --parts act \\
        --rounds 5 --reps 7

Part ``kan``: ``KANLinear`` (each basis) against an MLP of
equal parameter count, fwd+bwd, compiled, at D=256 batch 4096 and D=1024 batch 1024.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("deeperbrain-tiny", "slim-brain-tiny", "ultrasound-mtl-tiny")
# the full recipes at micro-batch 1 (``--full``): their model and input geometry, the generated demo data (a small
# corpus: only one batch is used); the ultrasound model's micro-batch is one planned batch, here of one image
FULL: dict[str, list[str]] = {
    "deeperbrain": ["train.micro_batch_size=1", "data.demo.n_subjects=2"],
    "slim-brain": ["train.micro_batch_size=1", "data.demo_subjects=2", "data.demo_frames=48"],
    "ultrasound-mtl": ["train.micro_batch_size=1", "data.source=demo", "data.demo_images_per_task=1",
                       "data.batch_size=1", "data.cache_dir=runs/cache/ultrasound-full"],
}


# ------------------------------------------------------------------ worker (runs inside old or new tree)
class _Worker:
    """Holds one recipe's module, optimizer and batch; answers timing commands."""

    def __init__(self, recipe: str, batch_file: str, overrides: list[str] | None = None) -> None:
        import torch

        from foundation.config import load_recipe
        from foundation.pretrain.components import TrainModule, build_model, build_objective
        from foundation.pretrain.optim import build_optimizer

        try:  # what `foundation pretrain` / `finetune` set up before training (issue 16; absent in the old tree)
            from foundation.kernels.host_memory import keep_freed_memory
        except ImportError:
            keep_freed_memory = None
        if keep_freed_memory is not None and os.environ.get("BENCH_KEEP_FREED", "1") == "1":
            keep_freed_memory()
        self.torch = torch
        self.recipe = load_recipe(recipe, overrides or None)
        torch.manual_seed(0)
        self.module = TrainModule(build_model(self.recipe), build_objective(self.recipe)).train()
        self.opt = build_optimizer(self.module, self.recipe.train)
        self.batch = torch.load(batch_file, weights_only=True)[recipe]
        self.compiled = False
        self.engines: dict[int, Any] = {}

    def _step(self, i: int, clip: bool = False) -> None:
        self.torch.manual_seed(i)
        self.opt.zero_grad(set_to_none=True)
        loss, _ = self.module(self.batch)
        loss.backward()
        if clip and self.recipe.deepspeed.gradient_clipping > 0:  # what DeepSpeed does for the recipe's clipping
            self.torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.recipe.deepspeed.gradient_clipping)
        self.opt.step()

    def _timed(self, fn, reps: int) -> float:
        times = []
        for i in range(reps):
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def opt_step(self, reps: int) -> float:
        torch = self.torch
        g = torch.Generator().manual_seed(0)
        for p in self.module.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        return self._timed(lambda i: self.opt.step(), reps)

    def step(self, reps: int) -> float:
        return self._timed(self._step, reps)

    def compile(self, warmup: int) -> float | str:
        """Compile the step and run ``warmup`` steps (the timed steps then reuse their masks' shapes)."""
        t = time.perf_counter()
        self.module.compile_step("default")
        try:
            for i in range(warmup):
                self._step(i)
        except Exception as err:  # reported in the table, not hidden
            return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        self.compiled = True
        return time.perf_counter() - t

    def peak_rss_mib(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def breaks(self) -> int:
        import torch._dynamo as dynamo

        batch = self.batch
        prepare = getattr(self.module.objective, "prepare", None)
        if prepare is not None:
            batch = prepare(self.module.model, batch)
        return dynamo.explain(self.module.step)(batch).graph_break_count

    def _engine(self, stage: int) -> Any:
        if stage not in self.engines:
            import deepspeed

            from foundation.pretrain.engine import deepspeed_config
            from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer

            os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            module = copy.deepcopy(self.module)
            cfg = deepspeed_config(self.recipe)
            cfg["zero_optimization"] = {"stage": stage}
            clip = None
            try:  # the new tree's engine clips itself at stage 0 in fp32 (foundation/pretrain/grad_clip.py)
                from foundation.pretrain.grad_clip import StageZeroClip, split_clipping
            except ImportError:
                split_clipping = None
            if split_clipping is not None:
                cfg, max_norm = split_clipping(cfg)
                clip = StageZeroClip(module, max_norm) if max_norm > 0 else None
            engine, _, _, _ = deepspeed.initialize(
                model=module, optimizer=build_optimizer(module, self.recipe.train), config=cfg,
                lr_scheduler=lambda opt: WarmupCosineScheduler(opt, self.recipe.train))
            try:  # the new tree's engine turns off DeepSpeed's identity all-reduce (one rank, stage 0)
                from foundation.pretrain.engine import drop_identity_allreduce
            except ImportError:
                drop_identity_allreduce = None
            if drop_identity_allreduce is not None:
                drop_identity_allreduce(engine)
            self.engines[stage] = (engine, clip)
        return self.engines[stage]

    def engine_vs_bare(self, reps: int, stage: int) -> tuple[float, float, float]:
        """Medians of a DeepSpeed step, a bare step and a bare step with the recipe's gradient clipping."""
        engine, clip = self._engine(stage)
        eng, bare, clipped = [], [], []
        for i in range(reps):
            self.torch.manual_seed(i)
            t = time.perf_counter()
            loss, _ = engine(self.batch)
            engine.backward(loss)
            if clip is not None and engine.is_gradient_accumulation_boundary():  # as Engine._loop does
                clip()
            engine.step()
            eng.append(time.perf_counter() - t)
            t = time.perf_counter()
            self._step(i)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            self._step(i, clip=True)
            clipped.append(time.perf_counter() - t)
        return statistics.median(eng), statistics.median(bare), statistics.median(clipped)


def worker_main(recipe: str, batch_file: str, overrides: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    w = _ActWorker() if recipe == "act" else _Worker(recipe, batch_file, overrides)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "quit":
            break
        out = getattr(w, name)(**cmd)
        print(json.dumps({"result": out}), flush=True)


# ------------------------------------------------------------------ parent
class _Proc:
    def __init__(self, tree: Path, recipe: str, batch_file: Path, workdir: Path, overrides: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   TORCHINDUCTOR_CACHE_DIR=str(workdir / "inductor"))  # a cache no other job writes
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", recipe, str(batch_file),
                                   json.dumps(overrides or [])],
                                  cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> Any:
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited with {self.p.wait()}")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, cmd: str, **kw: Any) -> Any:
        print(f"[{time.strftime('%H:%M:%S')}] {cmd} {kw}", file=sys.stderr, flush=True)
        self.p.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.p.stdin.flush()
        return self._read()["result"]

    def close(self) -> None:
        self.p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.p.stdin.flush()
        self.p.wait(timeout=120)


def make_batches(workdir: Path, recipes: dict[str, list[str]] | None = None, file: str = "batches.pt") -> Path:
    """One real micro-batch of each recipe's demo data (default: the tiny recipes; caches built under ``workdir``).

    ``recipes``: name -> ``--set`` overrides.
    """
    import torch
    from torch.utils.data import DataLoader

    from foundation.config import load_recipe
    from foundation.pretrain.components import build_components

    path = workdir / file
    if path.is_file():
        return path
    out = {}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for name, overrides in (recipes or {r: [] for r in RECIPES}).items():
            recipe = load_recipe(name, overrides or None)
            ds = build_components(recipe, prepare=True).dataset
            loader = DataLoader(ds, batch_size=recipe.train.micro_batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(0), collate_fn=getattr(ds, "collate", None))
            out[name] = next(iter(loader))
    finally:
        os.chdir(cwd)
    torch.save(out, path)
    return path


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def steps_table(old: Path, workdir: Path, recipes: list[str], rounds: int, reps: int, breaks: bool,
                compile_step: bool = True) -> list[str]:
    batch_file = make_batches(workdir)
    rows = ["| recipe | opt new/old | opt ms old -> new | step new/old (eager) | step ms old -> new | "
            "compiled/new eager | compile s | DS stage 0 / bare | DS stage 0 / bare + clip | DS recipe stage / bare | "
            "graph breaks | peak RSS MiB old / new |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for recipe in recipes:
        procs = {"old": _Proc(old, recipe, batch_file, workdir), "new": _Proc(ROOT, recipe, batch_file, workdir)}
        t: dict[str, list[float]] = {k: [] for k in ("opt_old", "opt_new", "step_old", "step_new")}
        for _ in range(rounds):
            for side in ("old", "new"):
                t[f"opt_{side}"].append(procs[side].ask("opt_step", reps=reps))
            for side in ("old", "new"):
                t[f"step_{side}"].append(procs[side].ask("step", reps=reps))
        new = procs["new"]
        stage: dict[int, list[float]] = {0: [], 2: []}
        like_for_like: list[float] = []  # stage 0 against a bare loop that clips gradients as the recipe asks
        for _ in range(rounds):
            for s in stage:
                eng, bare, clipped = new.ask("engine_vs_bare", reps=reps, stage=s)
                stage[s].append(eng / bare)
                if s == 0:
                    like_for_like.append(eng / clipped)
        n_breaks = new.ask("breaks") if breaks else "not run"
        rss_old = procs["old"].ask("peak_rss_mib")
        procs["old"].close()
        compile_s = new.ask("compile", warmup=reps) if compile_step else "not run"
        comp = [new.ask("step", reps=reps) for _ in range(rounds)] if not isinstance(compile_s, str) else []
        eager = t["step_new"]  # the same worker's eager figure, taken before compiling
        rss_new = new.ask("peak_rss_mib")
        new.close()
        rows.append(
            f"| {recipe} | {_med(t['opt_new']) / _med(t['opt_old']):.2f} | "
            f"{1e3 * _med(t['opt_old']):.2f} -> {1e3 * _med(t['opt_new']):.2f} | "
            f"{_med(t['step_new']) / _med(t['step_old']):.2f} | "
            f"{1e3 * _med(t['step_old']):.1f} -> {1e3 * _med(t['step_new']):.1f} | "
            f"{f'{_med(comp) / _med(eager):.2f}' if comp else compile_s} | "
            f"{compile_s if isinstance(compile_s, str) else f'{compile_s:.0f}'} | {_med(stage[0]):.2f} | {_med(like_for_like):.2f} | {_med(stage[2]):.2f} | "
            f"{n_breaks} | {rss_old:.0f} / {rss_new:.0f} |")
        print(rows[-1], flush=True)
    return rows


def full_table(old: Path, workdir: Path, recipes: list[str], rounds: int, reps: int) -> list[str]:
    """The full recipes' geometry at micro-batch 1 (:data:`FULL`), eager only: old against new, alternating."""
    rows = ["| recipe (micro-batch 1) | step new/old (eager) | step ms old -> new | opt new/old | peak RSS MiB old / new |",
            "|---|---:|---:|---:|---:|"]
    for recipe in recipes:
        t0 = time.perf_counter()
        batch_file = make_batches(workdir, {recipe: FULL[recipe]}, f"batch-{recipe}.pt")
        print(f"[{time.strftime('%H:%M:%S')}] {recipe}: batch ready in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        procs = {side: _Proc(tree, recipe, batch_file, workdir, FULL[recipe]) for side, tree in (("old", old), ("new", ROOT))}
        t: dict[str, list[float]] = {k: [] for k in ("opt_old", "opt_new", "step_old", "step_new")}
        for side in ("old", "new"):  # a warm-up step each (first-call allocations)
            procs[side].ask("step", reps=1)
        for _ in range(rounds):
            for side in ("old", "new"):
                t[f"step_{side}"].append(procs[side].ask("step", reps=reps))
        for _ in range(rounds):
            for side in ("old", "new"):
                t[f"opt_{side}"].append(procs[side].ask("opt_step", reps=reps))
        rss = {side: procs[side].ask("peak_rss_mib") for side in procs}
        for p in procs.values():
            p.close()
        rows.append(f"| {recipe} | {_med(t['step_new']) / _med(t['step_old']):.2f} | "
                    f"{1e3 * _med(t['step_old']):.0f} -> {1e3 * _med(t['step_new']):.0f} | "
                    f"{_med(t['opt_new']) / _med(t['opt_old']):.2f} | {rss['old']:.0f} / {rss['new']:.0f} |")
        print(rows[-1], flush=True)
    return rows


def _fwd_bwd(module: Any, x: Any) -> None:
    module(x).sum().backward()


def _interleaved(fns: dict[str, Any], x: Any, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            _fwd_bwd(fn, x)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


class _ActWorker:
    """One activation at a time against ``nn.GELU`` on tokens [16, 128, 512], in one of three modes: ``eager``,
    ``fused`` (eager, the layer built with ``fused=True``; new tree only) or ``compiled`` (``torch.compile`` of the
    layer against ``torch.compile`` of GELU)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.x = torch.randn(16, 128, 512, generator=torch.Generator().manual_seed(0), requires_grad=True)
        self.fns: dict[tuple[str, str], tuple[Any, Any]] = {}

    def prepare(self, name: str, mode: str) -> float:
        """Build (and, compiled or fused, compile by two warm-up calls) the pair; returns the warm-up seconds."""
        from foundation.layers.create_act import make_activation

        kw = {"fused": True} if mode == "fused" else {}
        layer, gelu = make_activation(name, num_features=512, **kw).train(), self.torch.nn.GELU()
        if mode == "compiled":
            layer, gelu = self.torch.compile(layer), self.torch.compile(gelu)
        t = time.perf_counter()
        for fn in (layer, gelu):
            for _ in range(2):
                _fwd_bwd(fn, self.x)
        self.fns[(name, mode)] = (layer, gelu)
        return time.perf_counter() - t

    def time(self, name: str, mode: str, reps: int) -> dict[str, float]:
        """Minimum fwd+bwd seconds over ``reps`` interleaved calls of the layer and of GELU."""
        layer, gelu = self.fns[(name, mode)]
        times: dict[str, list[float]] = {"ours": [], "gelu": []}
        for _ in range(reps):
            for key, fn in (("ours", layer), ("gelu", gelu)):
                t = time.perf_counter()
                _fwd_bwd(fn, self.x)
                times[key].append(time.perf_counter() - t)
                self.x.grad = None
        return {k: min(v) for k, v in times.items()}


ACT_NAMES = ["crrelu", "ash", "ash-hard", "selu", "dice", "proact", "topk-relu", "evonorm-b0", "evonorm-s0"]


def act_table(old: Path | None, workdir: Path, rounds: int, reps: int, compiled: bool = True,
              names: list[str] | None = None) -> list[str]:
    """Every activation against GELU, old tree and new tree in two workers fed alternately (old, new, old, new...).

    Each figure: the median over rounds of (minimum over a round's ``reps`` calls of the layer) / (the same of GELU,
    interleaved with it in the same worker). ``fused`` is the new tree's ``fused=True`` layer in eager mode; its
    warm-up (two calls: compiling) is reported in seconds.
    """
    names = names or ACT_NAMES
    workers = {"new": _Proc(ROOT, "act", Path("-"), workdir)}
    if old is not None:
        workers["old"] = _Proc(old, "act", Path("-"), workdir)
    modes = ["eager", "fused"] + (["compiled"] if compiled else [])
    rows = ["| layer | eager x GELU old | eager x GELU new | fused eager x GELU | fused first 2 calls s | compiled x "
            "compiled GELU old | compiled x compiled GELU new | new ms eager / fused / compiled | GELU ms eager / "
            "compiled |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        ratio: dict[tuple[str, str], float] = {}
        ms: dict[tuple[str, str], tuple[float, float]] = {}
        warm: dict[tuple[str, str], float] = {}
        for mode in modes:
            trees = [t for t in workers if not (t == "old" and mode == "fused")]
            for tree in trees:
                warm[(tree, mode)] = workers[tree].ask("prepare", name=name, mode=mode)
            rs: dict[str, list[float]] = {t: [] for t in trees}
            ts: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
            for _ in range(rounds):
                for tree in trees:
                    r = workers[tree].ask("time", name=name, mode=mode, reps=reps)
                    rs[tree].append(r["ours"] / r["gelu"])
                    ts[tree].append((r["ours"], r["gelu"]))
            for tree in trees:
                ratio[(tree, mode)] = statistics.median(rs[tree])
                ms[(tree, mode)] = (1e3 * statistics.median(o for o, _ in ts[tree]),
                                    1e3 * statistics.median(g for _, g in ts[tree]))

        def cell(tree: str, mode: str) -> str:
            return f"{ratio[(tree, mode)]:.2f}" if (tree, mode) in ratio else "not run"

        new_ms = " / ".join(f"{ms[('new', m)][0]:.2f}" if ("new", m) in ms else "-"
                            for m in ("eager", "fused", "compiled"))
        gelu_ms = " / ".join(f"{ms[('new', m)][1]:.2f}" if ("new", m) in ms else "-"
                             for m in ("eager", "compiled"))
        rows.append(f"| {name} | {cell('old', 'eager')} | {cell('new', 'eager')} | {cell('new', 'fused')} | "
                    f"{warm[('new', 'fused')]:.1f} | {cell('old', 'compiled')} | {cell('new', 'compiled')} | {new_ms} | "
                    f"{gelu_ms} |")
        print(rows[-1], flush=True)
    for w in workers.values():
        w.close()
    return rows


def kan_table(repeats: int) -> list[str]:
    import torch

    from foundation.layers import BASES, KANLinear, Mlp

    rows = ["| D | batch | basis | KAN params | compiled KAN ms | compiled MLP ms | x MLP |", "|---|---:|---|---:|---:|---:|---:|"]
    for d, batch in ((256, 4096), (1024, 1024)):
        x = torch.randn(batch, d, requires_grad=True)
        for basis in BASES:
            kan = KANLinear(d, d, basis=basis)
            params = sum(p.numel() for p in kan.parameters())
            mlp = Mlp(d, max(1, round((params - d) / (2 * d + 1))), d, act_layer="gelu")
            torch._dynamo.reset()
            c_kan, c_mlp = torch.compile(kan), torch.compile(mlp)
            for fn in (c_kan, c_mlp):
                for _ in range(2):
                    _fwd_bwd(fn, x)
            t = _interleaved({"kan": c_kan, "mlp": c_mlp}, x, repeats)
            rows.append(f"| {d} | {batch} | {basis} | {params:,} | {1e3 * t['kan']:.1f} | {1e3 * t['mlp']:.1f} | "
                        f"{t['kan'] / t['mlp']:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="a worktree of the code before the issue (b45ef54)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_step"), help="data caches and the batch file")
    ap.add_argument("--parts", default="steps,act,kan", help="steps, act, kan, full (the full recipes at "
                    "micro-batch 1, eager, old vs new; not in the default)")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--full-recipes", default=",".join(FULL), help="the recipes of --parts full")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-breaks", action="store_true", help="skip the torch._dynamo.explain count (minutes for the "
                    "ultrasound model on CPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled step and compiled activations "
                    "(minutes per recipe on CPU)")
    ap.add_argument("--act-names", default="", help="activations of the act table, comma-separated (default: all)")
    ap.add_argument("--act-no-old", action="store_true", help="act part: the new tree only (no old column)")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    out = [f"uptime at start: {os.popen('uptime').read().strip()}"]
    if "steps" in parts:
        out += ["", *steps_table(args.old.resolve(), args.workdir.resolve(), args.recipes.split(","), args.rounds, args.reps,
                                 not args.no_breaks, not args.no_compile)]
    if "full" in parts:
        out += ["", *full_table(args.old.resolve(), args.workdir.resolve(), args.full_recipes.split(","), args.rounds,
                                args.reps)]
    if "act" in parts:
        out += ["", *act_table(None if args.act_no_old else args.old.resolve(), args.workdir.resolve(), args.rounds,
                               args.reps, not args.no_compile, args.act_names.split(",") if args.act_names else None)]
    if "kan" in parts:
        out += ["", *kan_table(5)]
    out.append(f"uptime at end: {os.popen('uptime').read().strip()}")
    text = "\n".join(out) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
