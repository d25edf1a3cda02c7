"""Training memory of a ViT-B-sized block stack with and without 8-bit activation storage (Mesa).

Command:
    .venv/bin/python benchmarks/bench_memory.py            # 12 blocks, width 768, 12 heads, batch 8, 196 tokens (~4 min)
    .venv/bin/python benchmarks/bench_memory.py --depth 2  # quicker

Model: pre-norm transformer blocks (LayerNorm -> foundation Attention -> residual,
LayerNorm -> timm Mlp (Linear, GELU, Linear) -> residual), fp32 on CPU. The 8-bit
model is a deep copy passed through ``foundation.kernels.apply_act_bits(model, 8)``.

Measured side by side in one process:
* saved activations: bytes of the distinct storages autograd keeps for backward
  during one forward (``torch.autograd.graph.saved_tensors_hooks``), parameters
  excluded - exact, independent of the allocator;
* peak step memory: torch.profiler with ``profile_memory=True``, running sum of
  every event's own allocations minus frees over one forward + backward (gradients
  included, parameters not), at op granularity;
* step time: best of R forward + backward steps (the machine is shared with
  other jobs; the minimum is the least disturbed), alternating the two models.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from timm.layers import Mlp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_attention import profiler_peak  # noqa: E402
from foundation.kernels import apply_act_bits  # noqa: E402
from foundation.layers.attention import Attention  # noqa: E402


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    full = nn.Sequential(*[Block(args.dim, args.heads) for _ in range(args.depth)]).train()
    eight = copy.deepcopy(full)
    apply_act_bits(eight, 8)
    x = torch.randn(args.batch, args.tokens, args.dim)
    models = {"full precision": full, "8-bit storage": eight}

    saved = {name: saved_activation_bytes(m, x) for name, m in models.items()}
    for m in models.values():
        step(m, x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            start = time.perf_counter()
            step(m, x)
            times[name].append(time.perf_counter() - start)
    peaks = {}
    for name, m in models.items():
        m.zero_grad(set_to_none=True)
        peaks[name] = profiler_peak(lambda m=m: step(m, x))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, depth {args.depth}, width {args.dim}, "
          f"heads {args.heads}, batch {args.batch}, tokens {args.tokens}")
    print("| model | saved activations MiB | peak fwd+bwd MiB (profiler) | step s (best of "
          f"{args.repeats}) |")
    print("|---|---|---|---|")
    for name in models:
        print(f"| {name} | {saved[name] / 2**20:.1f} | {peaks[name] / 2**20:.1f} | {min(times[name]):.2f} |")
    f, e = "full precision", "8-bit storage"
    print(f"| ratio 8-bit / full | {saved[e] / saved[f]:.2f} | {peaks[e] / peaks[f]:.2f} "
          f"| {min(times[e]) / min(times[f]):.2f} |")


if __name__ == "__main__":
    main()
