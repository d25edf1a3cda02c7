"""EEG pipeline benchmarks: cache vs MNE reading, and deleted vs kept masked patches in pretraining.

Command (a few minutes on 2 shared CPU cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eeg.py --out runs/bench_eeg

1. Data: windows per second served by ``EEGWindows`` (memory-mapped cache, DataLoader, batch 16) against
   reading the same recordings through MNE each epoch (``read_recording`` + ``preprocess`` +
   ``cut_windows``, i.e. the reader, filters and resampling, *without* the statistics, which the
   cache also holds). Target: at least 10x.
2. Model: one pretraining step (forward + backward of the DeeperBrain objective) with masked patches
   deleted before the encoder (ours) against the same encoder fed every real token, masked ones replaced
   by a mask token (SimMIM/BERT style), at the recipe's mask ratio 0.5. The decoder and statistics head are
   the same in both. Memory is the activation memory saved for backward, summed over the tensors that
   autograd keeps (``torch.autograd.graph.saved_tensors_hooks``), not an allocator peak (CPU torch has no
   peak counter). Target: time ratio close to the visible fraction.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from foundation.data.demo import source_path
from foundation.data.masking import sample_keep
from foundation.kernels.packing import pack_visible
from foundation.modalities.eeg import (DeeperBrain, DeeperBrainConfig, DeeperBrainObjective,
                                       DeeperBrainObjectiveConfig, EEGWindows, EEGWindowsConfig)
from foundation.modalities.eeg.demo_corpus import CLASSES, DemoCorpusConfig
from foundation.modalities.eeg.preprocess import cut_windows, preprocess
from foundation.modalities.eeg.reader import find_recordings, read_recording


def bench_data(cfg: EEGWindowsConfig, epochs: int) -> dict[str, float]:
    EEGWindows.prepare(cfg)
    ds = EEGWindows(cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    t = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for b in loader:
            n += b["x"].shape[0]
    cache_rate = n / (time.perf_counter() - t)
    files = find_recordings(source_path(cfg.source, cfg.cache_dir))
    t = time.perf_counter()
    m = 0
    for _ in range(max(1, epochs // 5)):
        for f in files:
            win, _ = cut_windows(preprocess(read_recording(f), cfg.preprocess), cfg.window_seconds, cfg.labels)
            m += win.shape[0]
    mne_rate = m / (time.perf_counter() - t)
    return {"cache windows/s": cache_rate, "mne windows/s": mne_rate, "ratio": cache_rate / mne_rate}


class _Saved:
    """Sum the bytes of tensors autograd saves for backward inside the context."""

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> "_Saved":
        def pack(t: torch.Tensor) -> torch.Tensor:
            self.bytes += t.numel() * t.element_size()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _kept_forward(model: DeeperBrain, mask_token: torch.Tensor, batch: dict, keep: list[torch.Tensor]):
    """Every real token through the encoder, masked ones replaced by a mask token; then the same heads."""
    x, pos, chan_mask = batch["x"], batch["pos"], batch["chan_mask"]
    B, C, T = x.shape
    P = T // model.config.patch_size
    tok = model.tokens(x, pos, chan_mask)  # [B, N, D]
    visible = torch.zeros(B, C * P, dtype=torch.bool)
    for b, k in enumerate(keep):
        visible[b, k] = True
    tok = torch.where(visible[..., None], tok, mask_token.expand_as(tok))
    valid = model.valid_tokens(chan_mask, P)
    packed, cu, mx = pack_visible(tok, valid)  # all real tokens
    for blk in model.blocks:
        packed = blk(packed, cu, mx)
    packed = model.norm(packed)
    full = tok.new_zeros(tok.shape).masked_scatter(valid[..., None], packed)
    vis, vcu, _ = pack_visible(full, keep)
    return model.decode(vis, vcu, keep, pos, chan_mask, P), model.predict_stats(vis, vcu, keep, pos, chan_mask, P)


def bench_step(model_cfg: DeeperBrainConfig, batch: dict, repeats: int, mask_ratio: float) -> dict[str, float]:
    torch.manual_seed(0)
    model = DeeperBrain(model_cfg)
    obj = DeeperBrainObjective(DeeperBrainObjectiveConfig(mask_ratio=mask_ratio))
    mask_token = torch.nn.Parameter(torch.zeros(model.embed_dim))
    P = batch["x"].shape[-1] // model_cfg.patch_size
    valid = model.valid_tokens(batch["chan_mask"], P)
    keep, _ = sample_keep(valid, mask_ratio, torch.Generator().manual_seed(0))

    def deleted() -> torch.Tensor:
        return obj(model, batch)[0]

    def kept() -> torch.Tensor:
        recon, st = _kept_forward(model, mask_token, batch, keep)
        return recon.float().pow(2).mean() + st.float().pow(2).mean()

    out: dict[str, float] = {}
    for name, fn in (("deleted", deleted), ("kept", kept)):
        fn().backward()  # warm-up
        times = []
        for _ in range(repeats):
            model.zero_grad()
            t = time.perf_counter()
            fn().backward()
            times.append(time.perf_counter() - t)
        with _Saved() as saved:
            loss = fn()
        loss.backward()
        out[f"{name} s/step"] = statistics.median(times)
        out[f"{name} saved MiB"] = saved.bytes / 2**20
    out["time ratio"] = out["deleted s/step"] / out["kept s/step"]
    out["memory ratio"] = out["deleted saved MiB"] / out["kept saved MiB"]
    out["visible fraction"] = sum(k.numel() for k in keep) / int(valid.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_eeg")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = EEGWindowsConfig(cache_dir=f"{args.out}/cache", labels=CLASSES,
                        demo=DemoCorpusConfig(n_subjects=6, blocks_per_class=2))
    d = bench_data(cfg, args.epochs)
    print("| data path | windows/s |\n|---|---|")
    print(f"| memory-mapped cache (EEGWindows, DataLoader) | {d['cache windows/s']:.0f} |")
    print(f"| mne read + preprocess + cut each epoch | {d['mne windows/s']:.1f} |")
    print(f"| ratio cache / mne | {d['ratio']:.0f}x |\n")
    ds = EEGWindows(cfg)
    batch = torch.utils.data.default_collate([ds[i] for i in range(16)])
    sizes = {"tiny (64 x 2)": dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, decoder_dim=32, decoder_depth=1,
                                    decoder_heads=2),
             "small (256 x 6)": dict(embed_dim=256, depth=6, num_heads=8, decoder_dim=128, decoder_depth=1,
                                      decoder_heads=4)}
    print("| model (D x depth), batch 16 x 4 s | deleted s/step | kept s/step | time ratio | visible fraction | "
          "deleted saved MiB | kept saved MiB | memory ratio |\n|---|---|---|---|---|---|---|---|")
    for name, kw in sizes.items():
        r = bench_step(DeeperBrainConfig(**kw), batch, args.repeats, 0.5)
        print(f"| {name} | {r['deleted s/step']:.3f} | {r['kept s/step']:.3f} | {r['time ratio']:.2f} | "
              f"{r['visible fraction']:.2f} | {r['deleted saved MiB']:.1f} | {r['kept saved MiB']:.1f} | "
              f"{r['memory ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
