"""SLIM-Brain on the demo corpus: does pretraining help a linear probe, and does saliency matter?

Commands::

    .venv/bin/python benchmarks/fmri_study.py --steps 40 --seeds 3               # CPU, 2 cores: minutes
    python benchmarks/fmri_study.py --device cuda --steps 600 --batch 32 --seeds 3  # one GPU

What it does, all in one run and side by side:

1. builds the slim-brain-tiny demo corpus (``--subjects``, default 48, label = which of 4 networks a
   task drives) and two window lists with the same budget: the top-k salient windows
   per scan (stage 1) and k random windows per scan;
2. pretrains the tiny SLIM-Brain (Hiera4D JEPA, 70% unit deletion) for ``--steps``
   steps on each list, for each seed (a plain AdamW loop with the recipe's LR and
   EMA schedule; the engine's DeepSpeed loop does the same per step);
3. linear probe on every non-overlapping window, 4-fold cross-validation over
   subjects (a subject's windows are all in train or all in test), for: random
   init (same seeds), pretrained on salient windows, pretrained on random windows,
   and raw input (temporal std of the window average-pooled to 3x3x3 regions, no
   encoder). Probe features: the frozen final-stage tokens averaged over time per
   spatial mask unit and concatenated (the label is *where* a network is driven,
   which a mean over all tokens would blur);
4. prints a markdown table of balanced accuracy (mean +- std over seeds, each the
   mean over folds) and the ratio to random init.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch

from foundation.config import load_recipe
from foundation.eval.probe import fit_probe
from foundation.modalities.fmri.dataset import FMRIWindows, FMRIWindowsConfig
from foundation.modalities.fmri.jepa import JepaObjective
from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig
from foundation.data.batch import to_device


def pretrain(model_cfg: SlimBrainConfig, objective_cfg, data_cfg: FMRIWindowsConfig, steps: int, lr: float, batch: int,
             seed: int, device: str = "cpu") -> tuple[SlimBrain, list[float]]:
    """AdamW with linear warm-up and cosine decay, clip 1.0, EMA update per step. Returns the model and its losses."""
    torch.manual_seed(seed)
    model = SlimBrain(model_cfg).to(device)
    obj = JepaObjective(objective_cfg)
    ds = FMRIWindows(data_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, generator=g)
    step, warm, losses = 0, max(1, steps // 10), []
    while step < steps:
        for b in loader:
            b = to_device(b, torch.device(device))
            scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            loss, _ = obj(model, b)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            model.on_step_end(step)
            if step == steps:
                break
    return model, losses


@torch.no_grad()
def unit_features(encoder, ds: FMRIWindows, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen tokens averaged over time per spatial unit, concatenated: [S, U_s * T_f * D] (on the CPU)."""
    encoder.eval()
    ut = encoder.config.unit_grid[0]
    device = next(encoder.parameters()).device
    xs, ys = [], []
    for b in torch.utils.data.DataLoader(ds, batch_size=batch):
        f = encoder.forward_features(b["x"].to(device)).float().cpu()  # [B, U * T_f, D], units row-major over (t, z, y, x)
        f = f.view(f.shape[0], ut, -1, f.shape[-1]).mean(1)  # [B, Ut, Us * T_f, D] -> [B, Us * T_f, D]
        xs.append(f.flatten(1))
        ys.append(b["label"])
    return torch.cat(xs), torch.cat(ys)


def cv_probe(X: torch.Tensor, y: torch.Tensor, groups: list[str], seed: int, folds: int = 4) -> float:
    """Balanced accuracy of a linear probe, mean over subject-wise folds."""
    subjects = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(subjects))
    accs = []
    for f in range(folds):
        test_subj = {subjects[i] for i in order[f::folds]}
        te = np.array([g in test_subj for g in groups])
        res = fit_probe(X[~te], y[~te], X[te], y[te], kind="linear", seed=seed)
        accs.append(res.metrics["balanced_accuracy"])
    return float(np.mean(accs))


def raw_features(ds: FMRIWindows, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in idx:
        item = ds[int(i)]
        x = item["x"][0]  # [W, Z, Y, X]
        pooled = torch.nn.functional.adaptive_avg_pool3d(x, 3)  # [W, 3, 3, 3]
        xs.append(pooled.std(0).flatten())  # temporal std per coarse region: where the signal fluctuates
        ys.append(item["label"])
    return torch.stack(xs), torch.stack(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--subjects", type=int, default=48)
    ap.add_argument("--batch", type=int, default=0, help="pretraining batch (0: the recipe's micro batch)")
    ap.add_argument("--lr", type=float, default=0.0, help="peak LR (0: the recipe's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cache", default="runs/cache/fmri-study")
    ap.add_argument("--out", default="runs/fmri-study")
    args = ap.parse_args()
    torch.set_num_threads(2)
    recipe = load_recipe("slim-brain-tiny")
    batch = args.batch or recipe.train.micro_batch_size
    lr = args.lr or recipe.train.lr
    # the EMA ramp (ema_start -> 1) spans the whole run, as the recipe's ema_steps = train.steps does
    model_cfg = dataclasses.replace(recipe.model.config, ema_steps=args.steps)
    base = FMRIWindowsConfig(**{**recipe.data.config.__dict__, "cache_dir": args.cache, "demo_subjects": args.subjects})
    cfgs = {sel: FMRIWindowsConfig(**{**base.__dict__, "selection": sel}) for sel in ("saliency", "random", "all")}
    t0 = time.time()
    for c in cfgs.values():
        FMRIWindows.prepare(c)
    print(f"prepared corpus and windows in {time.time() - t0:.0f} s")
    evalset = FMRIWindows(cfgs["all"])
    groups = evalset.groups()
    salset = FMRIWindows(cfgs["saliency"])  # stage 1 also picks the windows at inference
    sal_groups = salset.groups()

    def both(encoder, seed: int) -> tuple[float, float]:
        return cv_probe(*unit_features(encoder, evalset), groups, seed), cv_probe(*unit_features(encoder, salset), sal_groups, seed)
    from foundation.modalities.fmri.demo_corpus import task_frames

    tf = task_frames(base.demo_frames, base.tr)
    hit = {sel: float(np.mean([tf[s:s + base.window].mean() for _, s in FMRIWindows(cfgs[sel]).items]))
           for sel in ("saliency", "random", "all")}
    rows: dict[str, list[tuple[float, float]]] = {}
    Xr, yr = raw_features(evalset, np.arange(len(evalset)))
    Xs, ys = raw_features(salset, np.arange(len(salset)))
    raw_name = "raw input (no encoder): temporal std of 3x3x3 regions"
    raw_rows = [(cv_probe(Xr, yr, groups, s), cv_probe(Xs, ys, sal_groups, s)) for s in range(args.first_seed, args.first_seed + args.seeds)]
    print(f"raw input: probe balanced accuracy {np.mean(raw_rows, 0)[0]:.3f} (all windows), {np.mean(raw_rows, 0)[1]:.3f} (salient)")
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        torch.manual_seed(seed)
        init = SlimBrain(recipe.model.config).encoder.to(args.device)
        rows.setdefault("random init", []).append(both(init, seed))
        print(f"seed {seed} random init: probe balanced accuracy {rows['random init'][-1][0]:.3f} (all windows), "
              f"{rows['random init'][-1][1]:.3f} (salient)")
        for sel in ("saliency", "random"):
            t = time.time()
            model, losses = pretrain(model_cfg, recipe.objective.config, cfgs[sel], args.steps, lr, batch, seed,
                                     args.device)
            acc = both(model.encoder, seed)
            curve = " ".join(f"{np.mean(losses[i:i + max(1, len(losses) // 8)]):.3f}" for i in range(0, len(losses), max(1, len(losses) // 8)))
            print(f"  loss (eighths of the run): {curve}")
            rows.setdefault(f"pretrained, {'top-k salient' if sel == 'saliency' else 'k random'} windows", []).append(acc)
            print(f"seed {seed} {sel}: {args.steps} steps x batch {batch} in {time.time() - t:.0f} s, probe balanced accuracy {acc[0]:.3f} (all windows), {acc[1]:.3f} (salient)")
    rows[raw_name] = raw_rows
    ref = np.mean(rows["random init"], axis=0)
    print(f"\nDemo corpus: {args.subjects} subjects, 4 classes (chance 0.25); probe on all {len(evalset)} non-overlapping "
          f"windows, 4-fold cross-validation over subjects; {args.steps} pretraining steps x batch "
          f"{batch} (peak LR {lr:g}) on {args.device}, {args.seeds} seeds.")
    print(f"Share of window frames inside task epochs: salient {hit['saliency']:.2f}, random {hit['random']:.2f}, "
          f"all {hit['all']:.2f}.\n")
    print("| encoder | probe on all windows: balanced acc. | vs random init | probe on salient windows: balanced acc. | vs random init |")
    print("|---|---|---|---|---|")
    for name, vals in rows.items():
        v = np.asarray(vals)
        m, sd = v.mean(0), v.std(0)
        print(f"| {name} | {m[0]:.3f} +- {sd[0]:.3f} | {m[0] / ref[0]:.2f}x | {m[1]:.3f} +- {sd[1]:.3f} | {m[1] / ref[1]:.2f}x |")


if __name__ == "__main__":
    main()
