"""Cost of the layer library's activations against torch's GELU, and of our EvoNorm against timm's.

Command (CPU, ~1-2 minutes):

    .venv/bin/python benchmarks/bench_activations.py

Prints two tables measured side by side in one run: forward+backward wall time as a ratio to the baseline (median of
repeats, interleaved), and the bytes autograd saves for backward (counted exactly with
``torch.autograd.graph.saved_tensors_hooks``; this is the activation memory a layer adds to training, not process
peak). Token layers run on [16, 128, 512] float32 tokens; EvoNorm on [8, 64, 32, 32] feature maps.
"""
from __future__ import annotations

import statistics
import time

import torch
from timm.layers.evo_norm import EvoNorm2dB0, EvoNorm2dS0
from torch import nn

from foundation.layers.create_act import make_activation
from foundation.layers.evo_norm import EvoNormB0, EvoNormS0


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:  # count each storage once (inputs saved by several ops)
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.detach().requires_grad_(True)).sum()
    return total


def _step(module: nn.Module, x: torch.Tensor) -> float:
    xi = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    module(xi).sum().backward()
    return time.perf_counter() - t0


def _race(pairs: dict[str, tuple[nn.Module, nn.Module]], x: torch.Tensor, repeats: int = 15) -> list[tuple]:
    rows = []
    for name, (ours, base) in pairs.items():
        for _ in range(3):  # warm-up
            _step(ours, x), _step(base, x)
        t_ours, t_base = [], []
        for _ in range(repeats):  # interleaved so background load hits both
            t_ours.append(_step(ours, x))
            t_base.append(_step(base, x))
        mo, mb = statistics.median(t_ours), statistics.median(t_base)
        rows.append((name, mo * 1e3, mb * 1e3, mo / mb, _saved_bytes(ours, x) / 2**20, _saved_bytes(base, x) / 2**20))
    return rows


def _print(title: str, base: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"| layer | ours ms | {base} ms | time ratio | ours saved MiB | {base} saved MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, mo, mb, r, so, sb in rows:
        print(f"| {name} | {mo:.2f} | {mb:.2f} | {r:.2f}x | {so:.1f} | {sb:.1f} |")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tokens = torch.randn(16, 128, 512)
    names = ["crrelu", "ash", "ash-hard", "selu", "dice", "proact", "topk-relu", "evonorm-b0", "evonorm-s0"]
    pairs = {n: (make_activation(n, num_features=512), nn.GELU()) for n in names}
    _print("Activations on tokens [16, 128, 512], forward+backward, vs nn.GELU", "GELU", _race(pairs, tokens))
    maps = torch.randn(8, 64, 32, 32)
    evo = {"EvoNorm-B0": (EvoNormB0(64, dim=1), EvoNorm2dB0(64)), "EvoNorm-S0": (EvoNormS0(64, dim=1), EvoNorm2dS0(64))}
    _print("EvoNorm on feature maps [8, 64, 32, 32], forward+backward, vs timm", "timm", _race(evo, maps))


if __name__ == "__main__":
    main()
