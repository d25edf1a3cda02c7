"""Layer-library benchmark: KAN family against an MLP of equal parameter count.

Command (from the repo root; pykan is an optional baseline installed for the benchmark only,
``.venv/bin/pip install --no-deps pykan``):

    .venv/bin/python benchmarks/bench_layers.py --write benchmarks/results_layers.md

    --quick        tiny sizes and few steps (a smoke run, about a minute)
    --skip-speed   only the function-fitting table
    --skip-fit     only the speed / memory table

Part 1, speed and memory: forward + backward of one layer on a batch of 4096 at
256 -> 256 and 1024 -> 1024, for our KANLinear with each basis (grid 5, B-spline
order 3), an MLP (D -> hidden -> D, GELU) whose hidden width gives the same
parameter count as that KAN, the efficient-kan formulation (Cox-de Boor recursion
basis + einsum, written below as the baseline) and pykan's KANLayer. Input
gradients are computed too (a hidden layer). Time is the best of repeated runs
(3 at 256, 2 at 1024), models interleaved round by round in this process; peak
memory is the extra memory allocated during one forward + backward, read from the torch
profiler (``profile_memory=True``: per-op allocations summed in op order, peak of
the running total). pykan builds [B, D_in, D_out] tensors, so it runs at 256 only
and with batch 1024 (its row is compared with our layers at that batch).

Part 2, function fitting at equal parameter count (about 600): MLP vs KAN vs S-KAN
vs AF-KAN (MLP: 2 -> h -> h -> 1 SiLU; KANs: two layers 2 -> w -> 1, grid 5) on
seven targets of (x1, x2) in [-1, 1]^2, 1024 training and 2048 test points, 300
full-batch Adam steps (lr 1e-2, cosine decay), test RMSE over 3 seeds (mean +- std).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import scipy.special
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from foundation.layers.afkan import AFKANLinear  # noqa: E402
from foundation.layers.kan import KANLinear  # noqa: E402
from foundation.layers.mlp import KANMlp, Mlp  # noqa: E402
from foundation.layers.skan import SKANLinear  # noqa: E402

BASES = ("bspline", "rbf", "chebyshev", "fourier")


# ----------------------------------------------------------------------------- baselines
class EfficientKANRef(nn.Module):
    """efficient-kan's formulation (Blealtan/efficient-kan): Cox-de Boor recursion basis + einsum."""

    def __init__(self, d_in: int, d_out: int, grid_size: int = 5, spline_order: int = 3) -> None:
        super().__init__()
        h = 2.0 / grid_size
        grid = torch.arange(-spline_order, grid_size + spline_order + 1) * h - 1.0
        self.register_buffer("grid", grid.expand(d_in, -1).contiguous())
        self.k = spline_order
        self.base_weight = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        self.spline_weight = nn.Parameter(torch.randn(d_out, d_in, grid_size + spline_order) * 0.1 / math.sqrt(d_in))
        self.spline_scaler = nn.Parameter(torch.ones(d_out, d_in))

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        g, x = self.grid, x.unsqueeze(-1)
        bases = ((x >= g[:, :-1]) & (x < g[:, 1:])).to(x.dtype)
        for k in range(1, self.k + 1):
            bases = (x - g[:, : -(k + 1)]) / (g[:, k:-1] - g[:, : -(k + 1)]) * bases[:, :, :-1] + (
                g[:, k + 1 :] - x
            ) / (g[:, k + 1 :] - g[:, 1:(-k)]) * bases[:, :, 1:]
        return bases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coef = self.spline_weight * self.spline_scaler.unsqueeze(-1)
        return F.linear(F.silu(x), self.base_weight) + torch.einsum("bik,oik->bo", self.b_splines(x), coef)


def load_pykan() -> type[nn.Module] | None:
    """pykan's KANLayer, imported without kan/__init__ (which needs pandas); None if not installed."""
    spec = importlib.util.find_spec("kan")
    if spec is None or spec.submodule_search_locations is None:
        return None
    pkg = types.ModuleType("kan")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("kan", pkg)
    from kan.KANLayer import KANLayer

    class PyKAN(nn.Module):
        def __init__(self, d_in: int, d_out: int) -> None:
            super().__init__()
            self.layer = KANLayer(in_dim=d_in, out_dim=d_out, num=5, k=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)[0]

    return PyKAN


# ----------------------------------------------------------------------------- measurement
def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def fwd_bwd(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    return run


def time_many(fns: list[Callable[[], None]], repeats: int) -> list[float]:
    """Best-of-``repeats`` seconds per function, the functions interleaved round by round.

    Interleaving puts every model under the same background load (the machine is
    shared); the minimum is the least disturbed run.
    """
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [min(t) for t in times]


def measure(models: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, tuple[int, float, float]]:
    fns = [fwd_bwd(m, x) for m in models.values()]
    times = time_many(fns, repeats)
    return {name: (n_params(m), t, peak_mib(f)) for (name, m), t, f in zip(models.items(), times, fns)}


def peak_mib(fn: Callable[[], None]) -> float:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak / 2**20


def mlp_like(d: int, target_params: int) -> Mlp:
    hidden = max(1, round((target_params - d) / (2 * d + 1)))
    return Mlp(d, hidden, d, act_layer="gelu")


def speed_table(sizes: tuple[int, ...], batch: int, repeats: int, pykan_batch: int) -> list[str]:
    rows = ["| D | batch | layer | params | ms fwd+bwd | x MLP time | peak MiB | x MLP mem |", "|---|---|---|---|---|---|---|---|"]
    PyKAN = load_pykan()
    for d in sizes:
        torch.manual_seed(0)
        x = torch.randn(batch, d).requires_grad_()  # a hidden layer: input gradients are needed too
        for basis in BASES:
            kan = KANLinear(d, d, basis, grid_size=5, spline_order=3)
            mlp = mlp_like(d, n_params(kan))
            models = {f"MLP (hidden {mlp.hidden_features})": mlp, f"KANLinear {basis}": kan}
            if basis == "bspline":
                models["efficient-kan (Cox-de Boor + einsum)"] = EfficientKANRef(d, d)
            results = measure(models, x, repeats if d <= 256 else max(1, repeats - 1))  # 1024: ~2-15 s a run
            base_t, base_m = next(iter(results.values()))[1:]
            for name, (p, t, mem) in results.items():
                rows.append(f"| {d} | {batch} | {name} | {p:,} | {t * 1e3:.1f} | {t / base_t:.2f} | {mem:.0f} | {mem / base_m:.2f} |")
            print("\n".join(rows[-len(results):]), flush=True)
        if PyKAN is not None and d <= 256:
            xb = x[:pykan_batch]
            kan = KANLinear(d, d, "bspline", grid_size=5, spline_order=3)
            mlp = mlp_like(d, n_params(kan))
            pk = PyKAN(d, d)
            models = {f"MLP (hidden {mlp.hidden_features})": mlp, "KANLinear bspline": kan, "pykan KANLayer": pk}
            results = measure(models, xb, repeats)
            base_t, base_m = next(iter(results.values()))[1:]
            for name, (p, t, mem) in results.items():
                rows.append(f"| {d} | {pykan_batch} | {name} | {p:,} | {t * 1e3:.1f} | {t / base_t:.2f} | {mem:.0f} | {mem / base_m:.2f} |")
            print("\n".join(rows[-3:]), flush=True)
    return rows


# ----------------------------------------------------------------------------- function fitting
TARGETS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "smooth exp(-(x1^2+x2^2))": lambda a, b: np.exp(-(a**2 + b**2)),
    "oscillatory sin(2pi x1)+cos(3pi x2)": lambda a, b: np.sin(2 * np.pi * a) + np.cos(3 * np.pi * b),
    "compositional exp(sin(pi x1)+x2^2)": lambda a, b: np.exp(np.sin(np.pi * a) + b**2),
    "kink abs(x1)+abs(x2-0.3)": lambda a, b: np.abs(a) + np.abs(b - 0.3),
    "high-frequency sin(10pi x1)": lambda a, b: np.sin(10 * np.pi * a) + 0 * b,
    "multiplicative x1*x2": lambda a, b: a * b,
    "special j0(20 x1)+0.5 x2": lambda a, b: scipy.special.j0(20 * a) + 0.5 * b,
}


class DeepMlp(nn.Module):
    """2 -> h -> h -> 1 SiLU MLP (two hidden layers, the usual function-fitting baseline)."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _build(kind: str, width: int) -> nn.Module:
    if kind == "MLP":
        return DeepMlp(width)
    if kind == "KAN":
        return KANMlp(2, width, 1, KANLinear, basis="bspline", grid_size=5)
    if kind == "S-KAN":
        return KANMlp(2, width, 1, SKANLinear, grid_size=5)
    return KANMlp(2, width, 1, AFKANLinear, grid_size=5, functions=("silu",))


def matched(kind: str, budget: int) -> nn.Module:
    best = min(range(1, 200), key=lambda w: abs(n_params(_build(kind, w)) - budget))
    return _build(kind, best)


def fit_table(steps: int, seeds: int, budget: int, n_train: int = 1024, n_test: int = 2048) -> list[str]:
    kinds = ("MLP", "KAN", "S-KAN", "AF-KAN")
    params = {k: n_params(matched(k, budget)) for k in kinds}
    head = " | ".join(f"{k} ({params[k]} p)" for k in kinds)
    rows = [f"| target | {head} |", "|---" * (len(kinds) + 1) + "|"]
    for tname, fn in TARGETS.items():
        cells = []
        for kind in kinds:
            errs = []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                xtr, xte = rng.uniform(-1, 1, (n_train, 2)), rng.uniform(-1, 1, (n_test, 2))
                ytr, yte = fn(xtr[:, 0], xtr[:, 1]), fn(xte[:, 0], xte[:, 1])
                xtr_t, ytr_t = torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr, dtype=torch.float32)[:, None]
                torch.manual_seed(seed)
                model = matched(kind, budget)
                opt = torch.optim.Adam(model.parameters(), lr=1e-2)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    F.mse_loss(model(xtr_t), ytr_t).backward()
                    opt.step()
                    sched.step()
                model.eval()
                with torch.no_grad():
                    pred = model(torch.tensor(xte, dtype=torch.float32))[:, 0].double().numpy()
                errs.append(float(np.sqrt(np.mean((pred - yte) ** 2))))
            cells.append(f"{np.mean(errs):.4f} +- {np.std(errs):.4f}")
        rows.append(f"| {tname} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--write", default=None, help="markdown file to write both tables to")
    args = ap.parse_args()
    out = []
    t0 = time.perf_counter()
    if not args.skip_speed:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        sizes, batch, reps, pkb = ((64, 128), 512, 2, 256) if args.quick else ((256, 1024), 4096, 3, 1024)
        out += ["### Speed and memory: forward + backward, one layer", ""] + speed_table(sizes, batch, reps, pkb) + [""]
    if not args.skip_fit:
        torch.set_num_threads(1)  # tiny models: one thread avoids spin-waits on a shared machine
        steps, seeds = (30, 1) if args.quick else (300, 3)
        out += [f"### Function fitting: test RMSE, {steps} Adam steps, mean +- std over {seeds} seeds", ""]
        out += fit_table(steps, seeds, budget=600) + [""]
    out.append(f"Total wall time {time.perf_counter() - t0:.0f} s, torch {torch.__version__}; speed with 2 threads, fitting with 1.")
    text = "\n".join(out)
    print(text)
    if args.write:
        tmp = args.write + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, args.write)


if __name__ == "__main__":
    main()
