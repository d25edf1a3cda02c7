"""Do the layer library's swaps help the shipped models? Same budget, seeds and data; a swap is a recipe override.

For DeeperBrain-tiny and SLIM-Brain-tiny (and the ultrasound model's backbone activation through
``model.act_layer``) every swap of :data:`SWAPS` is pretrained with the real engine
(``Engine(load_recipe(tiny, overrides), out).run()``, one process per cell), exported, and probed with the
frozen linear probe of ``foundation finetune --method linear-probe`` (:func:`run_finetune` on the shipped
``*-tiny-probe`` recipe, held-out subjects). Per cell it records:

- final pretraining loss: mean of the last 10% of steps;
- steps to reach the baseline's final loss (same model, same seed): the loss curves are smoothed by an
  exponential moving average (TensorBoard's, weight 0.8; single steps are too noisy under random masking);
  the target is the baseline's smoothed loss at its last step, and a run's count is the first step whose
  smoothed loss is at or below it (the baseline's own count is at most its step budget); the speed-up is
  baseline count / swap count (NOBLE's "1.47x fewer steps");
- time per step: median over the run of the engine's per-step wall time (``micro_batch / samples_per_s``);
- peak memory: on CUDA ``max_memory_allocated``; on CPU the growth of the process's peak RSS over the run
  (``ru_maxrss`` after training minus RSS before it: what training added on top of imports and data);
- frozen-probe balanced accuracy on held-out subjects;
- with ``train.sparsity_every`` on (activation swaps), ``sparsity.jsonl`` of the run (plotted by ``--report``);
- for the GELU and top-k encoders, the probe's balanced accuracy under input perturbations of the held-out
  items (Gaussian noise at several SNRs; for EEG, channel dropout), the probe trained on clean items
  (:func:`finetune_model`, the runner's own fitting path, on the runner's stratified subject split).

All cells run in one worker process (imports and DeepSpeed's first start paid once; a cell that raises is
recorded as failed and the study goes on; a worker that dies is restarted with its cell recorded as failed).
Cells are written as JSON lines to ``<out>/results.jsonl`` as they finish; a rerun skips cells already there
(resumable). ``--report`` writes the tables (markdown, mean ± std over seeds) and the figures from that file.

    OMP_NUM_THREADS=1 python benchmarks/layer_study.py --out runs/layer_study          # the study
    python benchmarks/layer_study.py --out runs/layer_study --timing                    # interleaved step times
    python benchmarks/layer_study.py --out runs/layer_study --report --figures benchmarks/figures
    python benchmarks/layer_study.py --out /tmp/s --models deeperbrain --swaps gelu --seeds 0 --steps 2  # smoke
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from foundation.pretrain.run_log import smooth

# model key -> (pretraining recipe, probe recipe)
MODELS = {
    "deeperbrain": ("deeperbrain-tiny", "deeperbrain-tiny-probe"),
    "slim-brain": ("slim-brain-tiny", "slim-brain-tiny-probe"),
    "ultrasound": ("ultrasound-mtl-tiny", "ultrasound-mtl-tiny-probe"),
}
ACTIVATIONS = ["gelu", "crrelu", "ash", "selu", "dice", "proact", "topk-relu"]
# swap -> recipe overrides, per model family ("transformer": DeeperBrain and SLIM-Brain)
TRANSFORMER_SWAPS: dict[str, list[str]] = {
    **{a: [f"model.activation={a}"] for a in ACTIVATIONS},
    "kan": ["model.mlp=kan"],
    "skan": ["model.mlp=skan"],
    "afkan": ["model.mlp=afkan"],
    "noble-mlp": ["model.mlp=noble"],
    "noble-mlp+attn": ["model.mlp=noble", "model.noble_attention=true"],
    "karat": ["model.attention=karat"],
    "mesa-8bit": ["memory.act_bits=8"],
}
SWAPS: dict[str, dict[str, list[str]]] = {
    "deeperbrain": TRANSFORMER_SWAPS,
    # Hiera4D's mask-unit attention is its own module (pooling, unit-local attention): KArAt does not replace it
    "slim-brain": {k: v for k, v in TRANSFORMER_SWAPS.items() if k != "karat"},
    # tinynet_e's own activation is SiLU ("silu"); the others through timm's act_layer
    "ultrasound": {"silu": [], **{a: [f"model.act_layer={a}"] for a in ACTIVATIONS}},
}
BASELINE = {"deeperbrain": "gelu", "slim-brain": "gelu", "ultrasound": "silu"}
SPARSITY_SWAPS = set(ACTIVATIONS) | {"silu"}  # runs that log sparsity.jsonl
ROBUST_SWAPS = ("gelu", "topk-relu")  # Part 4: top-k vs GELU encoders
SNRS_DB = (20.0, 10.0, 0.0)
CHANNEL_DROPOUT = (0.25, 0.5)
# default pretraining steps per model (chosen so that the whole study fits about 45 minutes on 2 shared cores)
DEFAULT_STEPS = {"deeperbrain": 120, "slim-brain": 20, "ultrasound": 30}


def final_loss(losses: list[float]) -> float:
    """Mean of the last 10% of the steps (at least one)."""
    n = max(1, math.ceil(len(losses) / 10))
    return sum(losses[-n:]) / n


def steps_to_reach(losses: list[float], target: float) -> int | None:
    """First step (1-based) whose smoothed loss is <= target; None when never."""
    for i, v in enumerate(smooth(losses), 1):
        if v <= target:
            return i
    return None


# ----------------------------------------------------------------------------------------------- one cell
def overrides(model: str, swap: str, seed: int, steps: int, cache: Path) -> list[str]:
    """The recipe overrides of one cell: budget, seed, cache, and the swap."""
    recipe = MODELS[model][0]
    ov = [f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}", f"train.seed={seed}",
          "train.progress_bar=false", "train.checkpoint_every=0", "train.log_every=1",
          f"data.cache_dir={cache / recipe}"]
    if model == "slim-brain":
        ov.append(f"model.ema_steps={steps}")
    if swap in SPARSITY_SWAPS:
        ov.append(f"train.sparsity_every={max(1, steps // 10)}")
    return ov + SWAPS[model][swap]


class Perturbed(torch.utils.data.Dataset):
    """Items of ``base`` with a deterministic input perturbation of ``x`` (per item, seeded by seed and index).

    ``kind``: "clean"; "noise" (Gaussian noise at ``snr_db`` relative to the item's mean signal power, over
    real channels for EEG, where padded channels stay zero); "dropout" (EEG: a share ``p`` of the real channels
    set flat to zero, chan_mask unchanged: dead electrodes the model is not told about).
    """

    def __init__(self, base: Any, kind: str, value: float = 0.0, seed: int = 0) -> None:
        self.base, self.kind, self.value, self.seed = base, kind, value, seed
        self.collate = getattr(base, "collate", None)

    def __len__(self) -> int:
        return len(self.base)

    def groups(self) -> Any:
        return self.base.groups()

    def __getitem__(self, i: int) -> Any:
        item = dict(self.base[i])
        if self.kind == "clean":
            return item
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        x = item["x"].float()
        real = item.get("chan_mask")
        rows = torch.ones(x.shape[0], dtype=torch.bool) if real is None else real.bool()
        if self.kind == "noise":
            power = x[rows].square().mean()
            noise = torch.randn(x.shape, generator=g) * (power / 10 ** (self.value / 10)).sqrt()
            if real is not None:
                noise = noise * rows.reshape(-1, *([1] * (x.dim() - 1)))
            x = x + noise
        elif self.kind == "dropout":
            idx = rows.nonzero().flatten()
            drop = idx[torch.randperm(len(idx), generator=g)[:round(self.value * len(idx))]]
            x = x.clone()
            x[drop] = 0.0
        else:
            raise ValueError(f"Perturbed: unknown kind {self.kind!r}")
        item["x"] = x.to(item["x"].dtype)
        return item


def robustness(model: str, export: Path, seed: int, cache: Path, out: Path, clean: float) -> dict[str, float]:
    """Balanced accuracy of the frozen linear probe, trained on clean items, on perturbed held-out items.

    ``clean`` is the cell's own probe score (:func:`run_finetune` with the same options: the same split, probe
    and seed, so a clean condition here would repeat it; the smoke run checked that they agree)."""
    import foundation
    from foundation.config import load_recipe
    from foundation.data.protocol import class_labels, prepare_dataset
    from foundation.data.splits import group_split
    from foundation.finetune.options import FinetuneOptions
    from foundation.finetune.runner import finetune_model
    from foundation.finetune.task_model import TaskModel
    from foundation.registry import DATASETS

    probe_name = MODELS[model][1]
    recipe = load_recipe(probe_name, [f"data.cache_dir={cache / probe_name}", f"train.seed={seed}"])
    data_cls = DATASETS.get(recipe.data.name)
    prepare_dataset(data_cls, recipe.data.config)
    data = data_cls(recipe.data.config)
    opts = FinetuneOptions(method="linear-probe", split_seed=seed)
    # the runner's held-out split: subjects, stratified by class
    tr, te = group_split(data.groups(), opts.test_fraction, opts.split_seed, labels=class_labels(data))
    conditions = [("noise", s) for s in SNRS_DB]
    if model == "deeperbrain":
        conditions += [("dropout", p) for p in CHANNEL_DROPOUT]
    scores = {"clean": clean}
    for kind, value in conditions:
        encoder = foundation.load(str(export))
        task_model = TaskModel.for_encoder(encoder, data.num_classes)
        test = torch.utils.data.Subset(Perturbed(data, kind, value, seed), te.tolist())
        res = finetune_model(task_model, torch.utils.data.Subset(data, tr.tolist()), test, recipe, opts,
                             out / f"{kind}-{value:g}")
        label = "clean" if kind == "clean" else (f"snr {value:g} dB" if kind == "noise" else f"drop {value:.0%}")
        scores[label] = res["metrics"]["balanced_accuracy"]
    return scores


def run_cell(model: str, swap: str, seed: int, steps: int, out: Path, cache: Path) -> dict[str, Any]:
    """Pretrain, export and probe one (model, swap, seed); returns the cell's record."""
    from foundation.config import load_recipe
    from foundation.finetune.options import FinetuneOptions
    from foundation.finetune.runner import run_finetune
    from foundation.pretrain.engine import Engine
    from foundation.pretrain.export import export_run
    from foundation.pretrain.run_log import read_jsonl

    recipe_name, probe_name = MODELS[model]
    ov = overrides(model, swap, seed, steps, cache)
    recipe = load_recipe(recipe_name, ov)
    run_dir = out / "runs" / model / swap / f"seed{seed}"
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _malloc_trim()  # freed heap of earlier cells back to the system, so that growth is this run's
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        result = Engine(recipe, run_dir).run()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss.growth_mb
    records = read_jsonl(run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records]
    step_s = [recipe.train.micro_batch_size / r["samples_per_s"] for r in records]
    export = export_run(recipe, result)
    probe = load_recipe(probe_name, [f"data.cache_dir={cache / probe_name}", f"train.seed={seed}"])
    fin = run_finetune(probe, str(export), run_dir / "probe", FinetuneOptions(method="linear-probe", split_seed=seed))
    cell = {"model": model, "swap": swap, "seed": seed, "steps": steps, "overrides": ov,
            "final_loss": final_loss(losses), "losses": losses, "step_s_median": statistics.median(step_s),
            "wall_s": wall, "peak_mb": peak, "saved_mb": saved_activation_mb(recipe), "peak_kind": "cuda max_memory_allocated" if cuda else "cpu peak rss growth (sampled every 5 ms)",
            "params": _exported_params(export),
            "probe_balanced_accuracy": fin["metrics"]["balanced_accuracy"],
            "sparsity": str(run_dir / "sparsity.jsonl") if (run_dir / "sparsity.jsonl").is_file() else None}
    if swap in ROBUST_SWAPS and model != "ultrasound":
        cell["robustness"] = robustness(model, export, seed, cache, run_dir / "robustness",
                                        cell["probe_balanced_accuracy"])
    return cell


def _exported_params(export: Path) -> int:
    """Number of values in the exported weights."""
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(export / "model.safetensors")).values())


def saved_activation_mb(recipe: Any) -> float:
    """MiB that autograd keeps for backward over one training micro-batch of ``recipe`` (model + objective, the
    recipe's ``memory.act_bits`` applied), each storage counted once: the activation memory the swaps change
    (Mesa stores int8 copies; KAN bases and KArAt's [N, N_max, 2G] scores are large). Deterministic, unlike
    process RSS."""
    from foundation.data.batch import to_device
    from foundation.pretrain.components import TrainModule, build_components

    with torch.random.fork_rng():
        torch.manual_seed(recipe.train.seed)
        parts = build_components(recipe, prepare=False)
        if recipe.memory.act_bits:
            from foundation.kernels.mesa import apply_act_bits

            apply_act_bits(parts.model, recipe.memory.act_bits)
        module = TrainModule(parts.model, parts.objective)
        data = parts.dataset
        batch = (getattr(data, "collate", None) or torch.utils.data.default_collate)(
            [data[i] for i in range(recipe.train.micro_batch_size)])
        seen: dict[tuple[int, int], int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = module(to_device(batch, torch.device("cuda" if torch.cuda.is_available() else "cpu")))
        del loss
    params = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in module.parameters()}
    return sum(v for k, v in seen.items() if k not in params) / 2**20  # weights saved for backward are not activations


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _rss_mb() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak growth of the process's resident memory over a block, sampled every 5 ms by a thread (CPU runs: the
    cells share one process, so ``ru_maxrss`` would carry the largest earlier cell)."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak - self.start


def timing(args: argparse.Namespace) -> None:
    """Time per training step of every swap against the baseline, interleaved in one process (each round runs
    every variant once, in turn), so that the machine's load falls on all variants alike; median over rounds.

    A step is model + objective forward, backward and the suite's AdamW step (``build_optimizer``) on one fixed
    micro-batch, without DeepSpeed (whose per-step overhead is the same for every swap). Written to
    ``<out>/timing.jsonl``.
    """
    from foundation.config import load_recipe
    from foundation.data.batch import to_device
    from foundation.errors import ConfigError
    from foundation.pretrain.components import TrainModule, build_components
    from foundation.pretrain.optim import build_optimizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache).resolve()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in args.models:
        names = [BASELINE[model]] + [s for s in SWAPS[model] if s != BASELINE[model]]
        names = [n for n in names if args.swaps is None or n in args.swaps or n == BASELINE[model]]
        variants = {}
        for name in list(names):
            recipe = load_recipe(MODELS[model][0], overrides(model, name, 0, 10, cache))
            torch.manual_seed(0)
            try:
                parts = build_components(recipe, prepare=True)
            except ConfigError as err:  # a swap the model cannot take (e.g. Dice through timm's act_layer)
                print(f"{model} {name}: not timed, the model cannot be built: {err}", flush=True)
                names.remove(name)
                continue
            if recipe.memory.act_bits:
                from foundation.kernels.mesa import apply_act_bits

                apply_act_bits(parts.model, recipe.memory.act_bits)
            module = TrainModule(parts.model, parts.objective).to(device)
            data = parts.dataset
            batch = to_device((getattr(data, "collate", None) or torch.utils.data.default_collate)(
                [data[i] for i in range(recipe.train.micro_batch_size)]), device)
            variants[name] = (module, build_optimizer(module, recipe.train), batch)

        def step(name: str) -> float:
            module, opt, batch = variants[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss, _ = module(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        for name in names:  # warm-up
            step(name), step(name)
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name in names:
                times[name].append(step(name))
        base = statistics.median(times[names[0]])
        with open(out / "timing.jsonl", "a") as f:
            for name in names:
                med = statistics.median(times[name])
                rec = {"model": model, "swap": name, "rounds": args.rounds, "step_ms": 1000 * med,
                       "ratio": med / base, "load": os.getloadavg()[0], "device": device.type}
                f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)


def timing_table(out: Path) -> str:
    path = out / "timing.jsonl"
    if not path.is_file():
        return ""
    rows = read_results(path)
    lines = ["| model | swap | step ms (median) | x baseline |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['swap']} | {r['step_ms']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    loads = [r["load"] for r in rows]
    lines.append(f"\n{rows[0]['rounds']} interleaved rounds on {rows[0]['device']}; 1-min load average during the "
                 f"runs {min(loads):.1f}-{max(loads):.1f}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the study
def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plan(models: list[str], swaps: list[str] | None, seeds: list[int]) -> list[tuple[str, str, int]]:
    """Cells in run order: seed first, so a study cut short has every swap at the earlier seeds."""
    cells = []
    for seed in seeds:
        for model in models:
            names = [BASELINE[model]] + [s for s in SWAPS[model] if s != BASELINE[model]]
            cells += [(model, s, seed) for s in names if swaps is None or s in swaps]
    return cells


def _cell_id(model: str, swap: str, seed: int) -> str:
    return f"{model}/{swap}/{seed}"


def worker(args: argparse.Namespace) -> None:
    """Run every cell not yet in results.jsonl, in this one process (imports and first-run costs paid once)."""
    out = Path(args.out).resolve()
    results, current = out / "results.jsonl", out / "current"
    done = {(r["model"], r["swap"], r["seed"]) for r in read_results(results)}
    for model, swap, seed in plan(args.models, args.swaps, args.seeds):
        if (model, swap, seed) in done:
            continue
        steps = args.steps or DEFAULT_STEPS[model]
        current.write_text(_cell_id(model, swap, seed))  # the parent names a cell that killed the process
        t0 = time.time()
        try:
            record = run_cell(model, swap, seed, steps, out, Path(args.cache).resolve())
            print(f"[{time.strftime('%H:%M:%S')}] {model} {swap} seed {seed}: loss {record['final_loss']:.4f} "
                  f"probe {record['probe_balanced_accuracy']:.3f} ({time.time() - t0:.0f} s)", flush=True)
        except Exception as err:  # a swap that fails is a result: recorded, and the study goes on
            import traceback

            record = {"model": model, "swap": swap, "seed": seed, "steps": steps,
                      "error": f"{type(err).__name__}: {err}"[:2000]}
            print(f"[{time.strftime('%H:%M:%S')}] {model} {swap} seed {seed}: FAILED\n{traceback.format_exc()}",
                  flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(record) + "\n")
        current.unlink(missing_ok=True)


def study(args: argparse.Namespace) -> None:
    """Start the worker; when it dies without a Python exception (killed, out of memory), record its cell as
    failed and start another, until every cell is in results.jsonl."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", "--out", str(out), "--cache", str(Path(args.cache).resolve()),
           "--steps", str(args.steps), "--models", *args.models, "--seeds", *map(str, args.seeds)]
    if args.swaps:
        cmd += ["--swaps", *args.swaps]
    cells = plan(args.models, args.swaps, args.seeds)
    for _ in range(len(cells) + 1):
        done = {(r["model"], r["swap"], r["seed"]) for r in read_results(out / "results.jsonl")}
        if all(c in done for c in cells):  # resumed with nothing left: no worker to start
            return
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        current = out / "current"
        if proc.returncode == 0 or not current.is_file():
            return
        model, swap, seed = current.read_text().split("/")
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps({"model": model, "swap": swap, "seed": int(seed), "steps": args.steps,
                                "error": f"the worker process died (exit status {proc.returncode})"}) + "\n")
        current.unlink()


# -------------------------------------------------------------------------------------------- the report
def _ms(values: list[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0]) + " (1 seed)"
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> swap -> aggregated figures (lists over seeds), with steps-to-baseline per seed."""
    ok = [r for r in rows if "error" not in r]
    base = {(r["model"], r["seed"]): r for r in ok if r["swap"] == BASELINE[r["model"]]}
    agg: dict[str, dict[str, dict[str, Any]]] = {}
    for r in ok:
        a = agg.setdefault(r["model"], {}).setdefault(r["swap"], {
            "final_loss": [], "steps_to_base": [], "speedup": [], "step_ms": [], "peak_mb": [], "probe": [],
            "saved_mb": [],
            "time_ratio": [], "reached": 0, "n": 0, "steps": r["steps"], "robustness": []})
        a["n"] += 1
        a["final_loss"].append(r["final_loss"])
        a["step_ms"].append(1000 * r["step_s_median"])
        a["peak_mb"].append(r["peak_mb"])
        if "saved_mb" in r:
            a["saved_mb"].append(r["saved_mb"])
        a["probe"].append(r["probe_balanced_accuracy"])
        if "robustness" in r:
            a["robustness"].append(r["robustness"])
        b = base.get((r["model"], r["seed"]))
        if b is not None:
            target = smooth(b["losses"])[-1]
            n = steps_to_reach(r["losses"], target)
            nb = steps_to_reach(b["losses"], target)
            a["time_ratio"].append(r["step_s_median"] / b["step_s_median"])
            if n is not None:
                a["reached"] += 1
                a["steps_to_base"].append(float(n))
                if nb is not None:
                    a["speedup"].append(nb / n)
    errors = [r for r in rows if "error" in r]
    for r in errors:
        agg.setdefault(r["model"], {}).setdefault(r["swap"], {"error": r["error"], "n": 0})
    return agg


def tables(agg: dict[str, dict[str, dict[str, Any]]], timing: dict[tuple[str, str], dict[str, Any]]) -> str:
    """One markdown table per model. Step time is the interleaved ``--timing`` figure (x baseline, one process,
    the load shared alike); the in-run median of each cell (``step_s_median``) stays in results.jsonl but is not
    compared, since cells ran minutes apart under a changing load."""
    lines = []
    for model, swaps in agg.items():
        steps = next((a["steps"] for a in swaps.values() if "steps" in a), "?")
        lines += [f"### {MODELS[model][0]} ({steps} pretraining steps per run; mean ± std over seeds)", "",
                  "| swap | seeds | final loss | steps to baseline loss (reached) | speed-up vs baseline | "
                  "step time x baseline (interleaved) | activations saved MB | probe bal. acc. |",
                  "|---|---|---|---|---|---|---|---|"]
        for swap, a in swaps.items():
            if "error" in a:
                first = a["error"].strip().splitlines()[-1][:140] if a["error"].strip() else "failed"
                lines.append(f"| {swap} | 0 | failed: {first} | | | | | |")
                continue
            t = timing.get((model, swap))
            ratio = f"{t['ratio']:.2f}x" if t else "–"
            stb = f"{_ms(a['steps_to_base'], '{:.0f}')} ({a['reached']}/{a['n']})"
            lines.append(f"| {swap} | {a['n']} | {_ms(a['final_loss'], '{:.4f}')} | {stb} | "
                         f"{_ms(a['speedup'], '{:.2f}x')} | {ratio} | "
                         f"{_ms(a['saved_mb'], '{:.2f}')} | {_ms(a['probe'], '{:.3f}')} |")
        lines.append("")
    return "\n".join(lines)


def robustness_table(agg: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for model, swaps in agg.items():
        runs = {s: a["robustness"] for s, a in swaps.items() if a.get("robustness")}
        if not runs:
            continue
        conds = list(next(iter(runs.values()))[0])
        lines += [f"### {MODELS[model][0]}: frozen linear probe (trained on clean items), balanced accuracy on "
                  "perturbed held-out items", "", "| encoder | " + " | ".join(conds) + " |",
                  "|---|" + "---|" * len(conds)]
        for swap, per_seed in runs.items():
            lines.append(f"| {swap} | " + " | ".join(_ms([d[c] for d in per_seed if c in d]) for c in conds) + " |")
        lines.append("")
    return "\n".join(lines)


def sparsity_figure(rows: list[dict[str, Any]], path: Path, threshold: str = "0.01") -> Path | None:
    """Share of near-zero MLP activations (|a| <= threshold * max|a|) vs step, per encoder layer, per swap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foundation.atomic import atomic_path

    runs = [r for r in rows if "error" not in r and r.get("sparsity") and Path(r["sparsity"]).is_file()
            and r["model"] in ("deeperbrain", "slim-brain")]
    if not runs:
        return None
    models = sorted({r["model"] for r in runs})
    swaps = [s for s in ACTIVATIONS if any(r["swap"] == s for r in runs)]
    fig, axes = plt.subplots(len(models), len(swaps), figsize=(2.6 * len(swaps), 2.6 * len(models)),
                             squeeze=False, sharey=True)
    for i, model in enumerate(models):
        for j, swap in enumerate(swaps):
            ax = axes[i][j]
            for r in (x for x in runs if x["model"] == model and x["swap"] == swap):
                recs = [json.loads(line) for line in open(r["sparsity"]) if line.strip()]
                layers = [n for n in recs[0]["layers"] if ".blocks." in n and ".mlp." in n and "target" not in n
                          and "decoder" not in n and "predictor" not in n]
                for k, name in enumerate(layers):
                    ax.plot([x["step"] for x in recs], [x["layers"][name]["near_zero_share"][threshold] for x in recs],
                            color=plt.cm.viridis(k / max(1, len(layers) - 1)), lw=1, alpha=0.7,
                            label=name.split("blocks.")[1].split(".")[0] if r["seed"] == runs[0]["seed"] else None)
            ax.set_title(f"{model}: {swap}", fontsize=8)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if i == len(models) - 1:
                ax.set_xlabel("step", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"share |a| <= {threshold} max|a|", fontsize=8)
            ax.tick_params(labelsize=7)
        handles, labels = axes[i][0].get_legend_handles_labels()
        if handles:
            uniq = dict(zip(labels, handles))
            axes[i][-1].legend(uniq.values(), [f"block {k}" for k in uniq], fontsize=6, loc="lower right")
    fig.suptitle("MLP activation sparsity over pretraining, per encoder block (colour: depth; lines: seeds)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def sparsity_table(rows: list[dict[str, Any]], threshold: str = "0.01") -> str:
    """First and last measurement of the near-zero share, mean over encoder blocks and seeds."""
    acc: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if "error" in r or not r.get("sparsity") or not Path(r["sparsity"]).is_file():
            continue
        recs = [json.loads(line) for line in open(r["sparsity"]) if line.strip()]
        layers = [n for n in recs[0]["layers"] if ".blocks." in n and ".mlp." in n and "target" not in n
                  and "decoder" not in n and "predictor" not in n]
        if not layers:
            continue
        first = statistics.mean(recs[0]["layers"][n]["near_zero_share"][threshold] for n in layers)
        last = statistics.mean(recs[-1]["layers"][n]["near_zero_share"][threshold] for n in layers)
        acc.setdefault((r["model"], r["swap"]), []).append((first, last))
    if not acc:
        return ""
    lines = [f"| model | activation | near-zero share at first measurement | at the end | change |",
             "|---|---|---|---|---|"]
    for (model, swap), v in acc.items():
        f, l = [a for a, _ in v], [b for _, b in v]
        lines.append(f"| {model} | {swap} | {_ms(f)} | {_ms(l)} | {_ms([b - a for a, b in v], '{:+.3f}')} |")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = read_results(out / "results.jsonl")
    agg = summarise(rows)
    fig = sparsity_figure(rows, Path(args.figures) / "layer_study_sparsity.png")
    timing_rows = {(r["model"], r["swap"]): r for r in read_results(out / "timing.jsonl")}
    text = ["## Layer study tables", "", tables(agg, timing_rows), "## Step time, interleaved", "", timing_table(out), "",
            "## Robustness", "", robustness_table(agg),
            "## Sparsity (near-zero share, |a| <= 0.01 max|a|, encoder MLP activations)", "", sparsity_table(rows),
            "", f"Figure: {fig}" if fig else ""]
    (out / "report.md").write_text("\n".join(text))
    print("\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="study folder (results.jsonl, runs/, report.md)")
    ap.add_argument("--models", nargs="+", default=["deeperbrain", "slim-brain"], choices=list(MODELS),
                    help="models (ultrasound: its activation swaps, when the budget allows)")
    ap.add_argument("--swaps", nargs="+", default=None, help="only these swaps (default: all of each model)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=0, help="pretraining steps per run (0: DEFAULT_STEPS per model)")
    ap.add_argument("--cache", default="runs/cache", help="data caches (shared by every cell)")
    ap.add_argument("--report", action="store_true", help="write the tables and figures from results.jsonl")
    ap.add_argument("--figures", default="benchmarks/figures", help="where --report writes the sparsity plot")
    ap.add_argument("--timing", action="store_true", help="interleaved step-time comparison (timing.jsonl)")
    ap.add_argument("--rounds", type=int, default=15, help="rounds of --timing")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
    elif args.timing:
        timing(args)
    elif args.report:
        report(args)
    else:
        study(args)


if __name__ == "__main__":
    main()
