"""Dopamine study at small scale: specialise a frozen digit MLP to 45-degree-rotated digits.

Command (repo root, CPU, about 2-4 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_peft.py            # full study, 5 seeds
    .venv/bin/python benchmarks/bench_peft.py --seeds 1 --steps 100   # smoke run

Setup: sklearn's 8x8 handwritten digits, upsampled to 16x16 (scipy.ndimage.zoom,
order 1) and rotated by 45 degrees (scipy.ndimage.rotate). Per seed the images
are split 50/20/30 into a pretraining pool, a specialisation pool and a test pool
(disjoint images). An MLP 256-256-256-10 (ReLU) is pretrained on the pretraining
pool with every image shown upright or rotated (50/50), frozen, then specialised
on the rotated specialisation pool with (a) nothing, (b) Dopamine (gates on fc1
and fc2), (c) LoRA r = 1, 4, 16 on fc1, fc2, head (peft), (d) full fine-tuning;
each method gets the same steps and batch, Adam, and its own fixed learning rate
(printed). Reported: accuracy on the rotated test pool (mean +- std over seeds),
trainable parameters, share of active hidden units (ReLU output > 0, both hidden
layers; for Dopamine this is after the hard gate), and for Dopamine the
multiply-adds done with column skipping against dense (strategies "union": the
batch's union of active columns through index_select, and "per-row": each
sample's own active units through embedding_bag), the same for ReLU zeros alone
on the frozen model, a Dopamine variant trained with a sparsity term (weight
--sparsity on the mean soft gate, DopamineModel.gate_activity), wall time of the skipping forward vs the dense forward
(same model, same inputs, side by side), and
the same ratio for one 4096x4096 layer at Dopamine's measured active share (where
the per-call overhead of finding and gathering columns no longer dominates).
The neuron attribution of seed 0 (which units fire per digit) is written to --out.
Memory: process peak RSS from resource.getrusage (whole run), and per method the
bytes of trainable parameters + Adam state (exact, from the parameter counts).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.datasets import load_digits
from torch import nn

from foundation.adapters import DopamineConfig, DopamineModel, LoraAdapterConfig, LoraAdapterModel
from foundation.adapters.dopamine import SkipInactiveLinear, neuron_attribution, write_attribution

torch.set_num_threads(1)


class DigitMLP(nn.Module):
    """256 -> hidden -> hidden -> 10 ReLU MLP on flattened 16x16 digits ([B, 256] -> [B, 10])."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(256, hidden), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(hidden, hidden), nn.ReLU()
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def make_images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upright and 45-degree-rotated 16x16 digits in [0, 1]: ([N, 256], [N, 256], labels [N])."""
    digits = load_digits()
    up = np.stack([ndimage.zoom(im / 16.0, 2, order=1) for im in digits.images])  # [N, 8, 8] -> [N, 16, 16]
    rot = np.stack([ndimage.rotate(im, 45, reshape=False, order=1) for im in up])
    return (up.reshape(len(up), -1).astype(np.float32), np.clip(rot, 0, 1).reshape(len(up), -1).astype(np.float32),
            digits.target.astype(np.int64))


def batches(x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, gen: torch.Generator):
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        yield x[idx], y[idx]


def train(model: nn.Module, params: list[nn.Parameter], x, y, steps: int, lr: float, gen, on_step=None,
          extra_loss=None) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for step, (xb, yb) in enumerate(batches(x, y, steps, 64, gen), start=1):
        loss = F.cross_entropy(model(xb), yb)
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step)  # the engine's hook: AdapterModel.on_step_end(step) after every optimizer step


@torch.no_grad()
def evaluate(model: nn.Module, base: DigitMLP, x, y) -> tuple[float, float]:
    """Accuracy and share of active hidden units (ReLU outputs > 0 over both hidden layers)."""
    model.eval()
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.gt(0).float().mean()))
             for m in (base.act1, base.act2)]
    acc = float((model(x).argmax(1) == y).float().mean())
    for h in hooks:
        h.remove()
    return acc, float(torch.stack(seen).mean())


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def pretrained_model(seed: int, xs, ys, steps: int, hidden: int) -> DigitMLP:
    torch.manual_seed(seed)
    model = DigitMLP(hidden)
    train(model, list(model.parameters()), xs, ys, steps, 1e-3, torch.Generator().manual_seed(seed))
    return model


def time_forward(model: nn.Module, x: torch.Tensor, batch: int, repeats: int = 3) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
            best = min(best, time.perf_counter() - t0)
    return best


def run_seed(seed: int, images, args) -> dict[str, dict]:
    up, rot, labels = images
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_pre, n_spec = int(0.5 * len(perm)), int(0.2 * len(perm))
    pre, spec, test = perm[:n_pre], perm[n_pre:n_pre + n_spec], perm[n_pre + n_spec:]
    show_rot = np.random.default_rng(seed + 1000).random(len(pre)) < 0.5
    x_pre = torch.from_numpy(np.where(show_rot[:, None], rot[pre], up[pre]))
    y_pre = torch.from_numpy(labels[pre])
    x_spec, y_spec = torch.from_numpy(rot[spec]), torch.from_numpy(labels[spec])
    x_test, y_test = torch.from_numpy(rot[test]), torch.from_numpy(labels[test])
    state = pretrained_model(seed, x_pre, y_pre, args.pretrain_steps, args.hidden).state_dict()

    def fresh() -> DigitMLP:
        m = DigitMLP(args.hidden)
        m.load_state_dict(state)
        return m

    out: dict[str, dict] = {}
    base = fresh()
    for p in base.parameters():
        p.requires_grad_(False)
    out["frozen"] = dict(zip(("acc", "active"), evaluate(base, base, x_test, y_test)), params=0)

    cfg = DopamineConfig(target_modules=("fc1", "fc2"), skip_modules=("fc2", "head"), tau_init=args.tau_init,
                         temperature_start=1.0, temperature_end=0.05, anneal_steps=args.steps, warmup_steps=10)
    fc1_macs = len(x_test) * 256 * args.hidden
    # Dopamine with a sparsity term on the soft gates (weight args.sparsity): trades accuracy for skipped work.
    base = fresh()
    sparse = DopamineModel(base, cfg)
    train(sparse, trainable(sparse), x_spec, y_spec, args.steps, args.lr_dopamine, torch.Generator().manual_seed(seed),
          on_step=sparse.on_step_end, extra_loss=lambda: args.sparsity * sparse.gate_activity())
    acc, active = evaluate(sparse, base, x_test, y_test)
    out[f"dopamine+sparsity{args.sparsity:g}"] = dict(acc=acc, active=active,
                                                      params=sum(p.numel() for p in trainable(sparse)))
    sparse.eval()
    for m in (m for _, m in sparse.skip_layers()):
        m.strategy, m.skipping = "per-row", True
    sparse.reset_mac_counts()
    with torch.no_grad():
        for i in range(len(x_test)):
            sparse(x_test[i:i + 1])
    counts = sparse.mac_counts().values()
    out[f"dopamine+sparsity{args.sparsity:g}"]["mac_per-row_b1"] = (
        (sum(d for d, _ in counts) + fc1_macs) / (sum(n for _, n in counts) + fc1_macs))
    out[f"dopamine+sparsity{args.sparsity:g}"]["consumer_per-row_b1"] = (
        sum(d for d, _ in counts) / sum(n for _, n in counts))

    base = fresh()
    dop = DopamineModel(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    train(dop, trainable(dop), x_spec, y_spec, args.steps, args.lr_dopamine, gen, on_step=dop.on_step_end)
    acc, active = evaluate(dop, base, x_test, y_test)
    out["dopamine"] = dict(acc=acc, active=active, params=sum(p.numel() for p in trainable(dop)))
    dop.eval()
    skips = [m for _, m in dop.skip_layers()]

    def macs(batch: int, strategy: str) -> tuple[int, int]:
        dop.reset_mac_counts()
        with torch.no_grad():
            for i in range(0, len(x_test), batch):
                dop(x_test[i:i + batch])
        counts = dop.mac_counts().values()
        out["dopamine"][f"consumer_{strategy}_b{batch}"] = sum(d for d, _ in counts) / sum(n for _, n in counts)
        return sum(d for d, _ in counts) + fc1_macs, sum(n for _, n in counts) + fc1_macs

    for strategy in ("union", "per-row"):
        for m in skips:
            m.strategy, m.skipping = strategy, True
        (done1, dense), (done256, _) = macs(1, strategy), macs(256, strategy)
        share = sum(m.counts.active_entries for m in skips) / sum(m.counts.entries for m in skips)
        t1, t256 = time_forward(dop, x_test, 1), time_forward(dop, x_test, 256)
        for m in skips:
            m.skipping = False
        d1, d256 = time_forward(dop, x_test, 1), time_forward(dop, x_test, 256)
        out["dopamine"].update({f"mac_{strategy}_b1": done1 / dense, f"mac_{strategy}_b256": done256 / dense,
                                f"time_{strategy}_b1": t1 / d1, f"time_{strategy}_b256": t256 / d256,
                                "entry_share": share})
    out["dopamine"]["attribution"] = neuron_attribution(dop, [(x_test, y_test)], 10) if seed == 0 else None
    dense1 = dense

    # ReLU-only skipping on the frozen baseline, for reference (same skip layers, no gate).
    base = fresh()
    base.fc2, base.head = SkipInactiveLinear(base.fc2), SkipInactiveLinear(base.head)
    base.eval()
    for strategy in ("union", "per-row"):
        for m in (base.fc2, base.head):
            m.skipping, m.strategy = True, strategy
            m.counts.reset()
        with torch.no_grad():
            for i in range(len(x_test)):
                base(x_test[i:i + 1])
        relu_done = base.fc2.counts.done + base.head.counts.done + fc1_macs
        out["frozen"][f"mac_{strategy}_b1"] = relu_done / dense1
        out["frozen"][f"consumer_{strategy}_b1"] = (relu_done - fc1_macs) / (dense1 - fc1_macs)

    for r in args.ranks:
        base = fresh()
        peft_model = LoraAdapterModel.inject(
            base, LoraAdapterConfig(preset="custom", target_modules=("fc1", "fc2", "head"), r=r, alpha=2.0 * r))
        train(peft_model, trainable(peft_model), x_spec, y_spec, args.steps, args.lr_lora,
              torch.Generator().manual_seed(seed))
        acc, active = evaluate(peft_model, base, x_test, y_test)
        out[f"lora-r{r}"] = dict(acc=acc, active=active, params=sum(p.numel() for p in trainable(peft_model)))

    base = fresh()
    train(base, list(base.parameters()), x_spec, y_spec, args.steps, args.lr_full, torch.Generator().manual_seed(seed))
    acc, active = evaluate(base, base, x_test, y_test)
    out["full-ft"] = dict(acc=acc, active=active, params=sum(p.numel() for p in base.parameters()))
    return out


def wide_layer_timing(share: float, strategy: str, width: int = 4096, repeats: int = 100) -> tuple[float, float]:
    """Skipping vs dense wall time of one width x width layer at batch 1, ``share`` of input entries active."""
    torch.manual_seed(0)
    layer = SkipInactiveLinear(nn.Linear(width, width), strategy)
    x = torch.rand(repeats, 1, width)
    x[torch.rand(repeats, 1, width) >= share] = 0.0
    times: dict[bool, float] = {}
    with torch.no_grad():
        for skipping in (False, True, False, True):
            layer.skipping = skipping
            t0 = time.perf_counter()
            for row in x:
                layer(row)
            times[skipping] = min(times.get(skipping, float("inf")), time.perf_counter() - t0)
    return times[True] / times[False], layer.counts.done / max(layer.counts.dense, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument("--steps", type=int, default=300, help="specialisation steps (batch 64)")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tau-init", type=float, default=-1.0)
    parser.add_argument("--lr-dopamine", type=float, default=3e-2)
    parser.add_argument("--lr-lora", type=float, default=3e-3)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--sparsity", type=float, default=1.0, help="weight of the gate-activity term (2nd row)")
    parser.add_argument("--out", default="/tmp/bench_peft", help="folder for the attribution CSV/markdown/PNG")
    args = parser.parse_args()
    t0 = time.perf_counter()
    images = make_images()
    runs = [run_seed(s, images, args) for s in range(args.seeds)]
    names = list(runs[0])

    def ms(key: str, name: str, scale: float = 1.0) -> str:
        vals = [r[name][key] * scale for r in runs if key in r[name]]
        if not vals:
            return "-"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        digits = 1 if scale == 100 else 3
        return f"{statistics.mean(vals):.{digits}f} +- {sd:.{digits}f}"

    print(f"lr: dopamine {args.lr_dopamine}, lora {args.lr_lora}, full {args.lr_full}; steps {args.steps}, batch 64, "
          f"seeds {args.seeds}")
    print("| method | rotated test acc % | trainable params | params + Adam state (KiB) | active hidden units % |")
    print("|---|---|---|---|---|")
    for name in names:
        p = runs[0][name]["params"]
        print(f"| {name} | {ms('acc', name, 100)} | {p:,} | {p * 4 * 3 / 1024:.1f} | {ms('active', name, 100)} |")
    print()
    print("| hard-gate conditional compute (test pool) | value (mean +- std over seeds) |")
    print("|---|---|")
    for strategy in ("union", "per-row"):
        for b in ("b1", "b256"):
            print(f"| MACs done / dense, whole MLP, Dopamine, {strategy}, batch {b[1:]} | "
                  f"{ms(f'mac_{strategy}_{b}', 'dopamine')} |")
    print(f"| MACs done / dense, gated consumers only (fc2 + head), Dopamine, per-row, batch 1 | "
          f"{ms('consumer_per-row_b1', 'dopamine')} |")
    print(f"| MACs done / dense, gated consumers only (fc2 + head), frozen + ReLU-zero skipping only, per-row, "
          f"batch 1 | {ms('consumer_per-row_b1', 'frozen')} |")
    sparse_name = f"dopamine+sparsity{args.sparsity:g}"
    print(f"| MACs done / dense, gated consumers only (fc2 + head), {sparse_name}, per-row, batch 1 | "
          f"{ms('consumer_per-row_b1', sparse_name)} |")
    print(f"| MACs done / dense, whole MLP, {sparse_name}, per-row, batch 1 | {ms('mac_per-row_b1', sparse_name)} |")
    for strategy in ("union", "per-row"):
        print(f"| MACs done / dense, whole MLP, frozen + ReLU-zero skipping only, {strategy}, batch 1 | "
              f"{ms(f'mac_{strategy}_b1', 'frozen')} |")
    for strategy in ("union", "per-row"):
        for b in ("b1", "b256"):
            print(f"| wall time skipping / dense, Dopamine MLP, {strategy}, batch {b[1:]} | "
                  f"{ms(f'time_{strategy}_{b}', 'dopamine')} |")
    share = statistics.mean(r["dopamine"]["entry_share"] for r in runs)
    for strategy in ("union", "per-row"):
        t_ratio, m_ratio = wide_layer_timing(share, strategy)
        print(f"| wall time skipping / dense, one 4096x4096 layer, {strategy}, batch 1, {share:.0%} of inputs "
              f"active (Dopamine's measured share) | {t_ratio:.3f} (MACs {m_ratio:.3f}) |")
    print()
    rates = runs[0]["dopamine"]["attribution"]
    paths = write_attribution(rates, args.out)
    print(f"neuron attribution of seed 0 (rotated test pool): {paths['markdown']}, {paths['png']}, {paths['csv']}")
    for name, r in rates.items():
        per_class = (r > 0.5).float().mean(1)
        print(f"  {name}: units firing on > 50% of a class's samples, per class 0-9: "
              + " ".join(f"{float(v):.0%}" for v in per_class))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (getrusage, whole run): {peak:.0f} MiB; total time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
