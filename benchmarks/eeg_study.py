"""DeeperBrain on the demo corpus: frozen-probe balanced accuracy on held-out subjects.

Compares, over 3 seeds (seed = subject split + weights + masks + probe init):

- the encoder pretrained with reconstruction + statistics prediction (the DeeperBrain objective),
- the same encoder pretrained with reconstruction only (statistics weight 0), same steps and batches,
- the same encoder at random init,
- a probe on handcrafted log band powers (6 scalp regions x 5 bands).

Encoder features are pooled two ways: the mean of every real token ("mean"), and the mean per scalp
region ("regions", the band-power baseline's six regions, 6 x D).

Pretraining runs on the training subjects' windows only (labels unused), in process with AdamW and a
warmup-cosine schedule like the engine's (no DeepSpeed: one process, so 6 pretraining runs fit the budget).

Command (about 15-25 minutes on 2 shared CPU cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eeg_study.py --out runs/eeg_study

Quick check: ``--steps 20 --subjects 6``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from foundation.eval.report import markdown_table, save_confusion_matrix
from foundation.data.splits import group_split
from foundation.modalities.eeg import (DeeperBrain, DeeperBrainConfig, DeeperBrainObjective,
                                       DeeperBrainObjectiveConfig, EEGWindows, EEGWindowsConfig)
from foundation.modalities.eeg.demo_corpus import CLASSES, DemoCorpusConfig
from foundation.modalities.eeg.downstream import band_power_features, encode_windows, frozen_probe


def model_config() -> DeeperBrainConfig:
    return DeeperBrainConfig(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, decoder_dim=32, decoder_depth=1,
                             decoder_heads=2, n_stats=8)


def pretrain(ds: torch.utils.data.Dataset, rows: np.ndarray, stats_weight: float, steps: int, batch: int,
             lr: float, seed: int) -> tuple[DeeperBrain, list[float]]:
    torch.manual_seed(seed)
    model = DeeperBrain(model_config())
    obj = DeeperBrainObjective(DeeperBrainObjectiveConfig(mask_ratio=0.5, stats_weight=stats_weight))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    sub = torch.utils.data.Subset(ds, rows.tolist())
    loader = torch.utils.data.DataLoader(sub, batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    warm, step, losses = max(1, steps // 10), 0, []
    model.train()
    while step < steps:
        for b in loader:
            if step >= steps:
                break
            scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            loss, met = obj(model, b)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(met["recon"]))
            step += 1
    return model, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/eeg_study")
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--blocks", type=int, default=6, help="8-s blocks per class per subject")
    ap.add_argument("--effect", type=float, default=1.0, help="class effect size of the demo corpus (1 = easy)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = EEGWindowsConfig(cache_dir=str(out / "cache"), labels=CLASSES, window_seconds=4.0,
                        demo=DemoCorpusConfig(n_subjects=args.subjects, blocks_per_class=args.blocks, effect=args.effect, seed=0))
    t0 = time.time()
    report = EEGWindows.prepare(cfg)
    ds = EEGWindows(cfg)
    print(f"cache: {len(ds)} windows, {len(ds.subjects)} subjects, left out {report['n_left_out']} "
          f"({time.time() - t0:.0f} s)", flush=True)
    bp = band_power_features(ds, ds.index["sfreq"], tuple(tuple(b) for b in cfg.stats.bands))
    subj = ds.subject_ids[ds.rows]
    results: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[list[float]]] = {}
    last_pred = None
    for seed in args.seeds:
        tr, te = group_split(subj, test_fraction=0.34, seed=seed)
        y = torch.as_tensor(ds.labels[ds.rows])
        runs = {"band powers": bp}
        torch.manual_seed(seed)
        rand = DeeperBrain(model_config())
        for pool in ("mean", "regions"):
            runs[f"random init ({pool})"] = encode_windows(rand, ds, pool=pool)[0]
        for name, w in (("recon + stats", 1.0), ("recon only", 0.0)):
            t1 = time.time()
            model, losses = pretrain(ds, tr, w, args.steps, args.batch, args.lr, seed)
            curves.setdefault(name, []).append(losses)
            for pool in ("mean", "regions"):
                runs[f"pretrained: {name} ({pool})"] = encode_windows(model, ds, pool=pool)[0]
            print(f"seed {seed} {name}: {args.steps} steps in {time.time() - t1:.0f} s, recon "
                  f"{np.mean(losses[:10]):.4f} -> {np.mean(losses[-10:]):.4f}", flush=True)
        for name, X in runs.items():
            for kind in ("linear", "mlp"):
                res = frozen_probe(X, y, tr, te, kind=kind, seed=seed)
                results.setdefault(f"{name} | {kind}", []).append(res.metrics)
                if name == "pretrained: recon + stats (regions)" and kind == "linear":
                    last_pred = (y[te], res.y_pred)
            print(f"seed {seed} {name}: linear bal-acc {results[f'{name} | linear'][-1]['balanced_accuracy']:.3f}, "
                  f"mlp {results[f'{name} | mlp'][-1]['balanced_accuracy']:.3f}", flush=True)
    rows = []
    for key, ms in results.items():
        name, kind = key.split(" | ")
        row = {"features": name, "probe": kind}
        for m in ("balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc"):
            vals = np.array([r[m] for r in ms])
            row[m] = f"{vals.mean():.3f} ± {vals.std():.3f}"
        rows.append(row)
    table = markdown_table(rows)
    print(table)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"results": results, "curves": curves, "args": vars(args)}))
    if last_pred is not None:
        save_confusion_matrix(last_pred[0], last_pred[1], CLASSES, out / "confusion.png",
                              title="recon + stats, regions, linear probe (last seed)")


if __name__ == "__main__":
    main()
