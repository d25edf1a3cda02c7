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
multiply-adds done with column skipping against dense, plus wall time of the
skipping forward vs the dense forward (same model, same inputs, side by side).
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
from foundation.adapters.dopamine import SkipInactiveLinear

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


def train(model: nn.Module, params: list[nn.Parameter], x, y, steps: int, lr: float, gen, on_step=None) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for xb, yb in batches(x, y, steps, 64, gen):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()


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

    base = fresh()
    cfg = DopamineConfig(target_modules=("fc1", "fc2"), skip_modules=("fc2", "head"), tau_init=args.tau_init,
                         temperature_start=1.0, temperature_end=0.05, anneal_steps=args.steps, warmup_steps=10)
    dop = DopamineModel(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    train(dop, trainable(dop), x_spec, y_spec, args.steps, args.lr_dopamine, gen, on_step=dop.advance)
    acc, active = evaluate(dop, base, x_test, y_test)
    out["dopamine"] = dict(acc=acc, active=active, params=sum(p.numel() for p in trainable(dop)))
    dop.eval()
    dop.reset_mac_counts()
    with torch.no_grad():
        for i in range(len(x_test)):  # batch 1: per-sample skipping
            dop(x_test[i:i + 1])
    fc1_macs = len(x_test) * 256 * args.hidden
    done1 = sum(d for d, _ in dop.mac_counts().values()) + fc1_macs
    dense1 = sum(n for _, n in dop.mac_counts().values()) + fc1_macs
    dop.reset_mac_counts()
    with torch.no_grad():
        for i in range(0, len(x_test), 256):
            dop(x_test[i:i + 256])
    done256 = sum(d for d, _ in dop.mac_counts().values()) + fc1_macs
    t_skip1, t_skip256 = time_forward(dop, x_test, 1), time_forward(dop, x_test, 256)
    for m in dop.modules():
        if isinstance(m, SkipInactiveLinear):
            m.skipping = False
    t_dense1, t_dense256 = time_forward(dop, x_test, 1), time_forward(dop, x_test, 256)
    out["dopamine"].update(mac_ratio_b1=done1 / dense1, mac_ratio_b256=done256 / dense1,
                           time_ratio_b1=t_skip1 / t_dense1, time_ratio_b256=t_skip256 / t_dense256)

    # ReLU-only skipping on the frozen baseline, for reference (same skip layers, no gate).
    base = fresh()
    base.fc2, base.head = SkipInactiveLinear(base.fc2), SkipInactiveLinear(base.head)
    base.eval()
    base.fc2.skipping = base.head.skipping = True
    with torch.no_grad():
        for i in range(len(x_test)):
            base(x_test[i:i + 1])
    relu_done = base.fc2.counts.done + base.head.counts.done + fc1_macs
    out["frozen"]["mac_ratio_b1"] = relu_done / dense1

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
        return f"{statistics.mean(vals):.1f} +- {sd:.1f}" if scale == 100 else f"{statistics.mean(vals):.3f} +- {sd:.3f}"

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
    print(f"| MACs done / dense, Dopamine, batch 1 | {ms('mac_ratio_b1', 'dopamine')} |")
    print(f"| MACs done / dense, Dopamine, batch 256 (union of active units) | {ms('mac_ratio_b256', 'dopamine')} |")
    print(f"| MACs done / dense, frozen + ReLU-zero skipping only, batch 1 | {ms('mac_ratio_b1', 'frozen')} |")
    print(f"| wall time skipping / dense, Dopamine, batch 1 | {ms('time_ratio_b1', 'dopamine')} |")
    print(f"| wall time skipping / dense, Dopamine, batch 256 | {ms('time_ratio_b256', 'dopamine')} |")
    print()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (getrusage, whole run): {peak:.0f} MiB; total time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
