"""Tile sizes of the Triton varlen kernels vs padded SDPA, on one CUDA GPU (kernel times by CUDA events).

    python3 benchmarks/sweep_varlen_tiles.py            # about 2 minutes on an H200, most of it compiling

Workload as ``bench_attention.py`` (bf16, H = 12, Dh = 64, 70% masking of 196 and 1568 tokens). Per workload:

1. where the time goes: ``varlen_attention`` (eager: its autograd.Function; fwd, and fwd+bwd) vs the
   forward kernel called directly with the default tiles, vs padded SDPA with a key-padding mask (fwd, fwd+bwd);
2. forward tiles: each :class:`~foundation.kernels.triton_varlen.TileConfig`, kernel time and max |out - default|;
3. backward tiles: each (dK/dV, dQ) pair, time of ``triton_varlen_bwd`` (Delta pre-pass + both kernels) and the
   max |grad - default| over dq, dk, dv.

Times are ``triton.testing.do_bench`` medians (CUDA events, 25 ms warm-up, 100 ms of repeats); a config that
fails to compile (shared memory, registers) is reported as failed. Ratios are against padded SDPA of the same pass.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import make_inputs, padded  # noqa: E402

from foundation.kernels import varlen_attention  # noqa: E402
from foundation.kernels.triton_varlen import (TileConfig, bwd_configs, fwd_config, triton_varlen_bwd,  # noqa: E402
                                              triton_varlen_fwd)
from foundation.kernels.varlen import _resolve_mode  # noqa: E402

FWD = [TileConfig(128, 64, 4), TileConfig(64, 64, 4, 2), TileConfig(128, 64, 8, 2), TileConfig(64, 32, 4, 3),
       TileConfig(128, 32, 4, 2)]
BWD = [None,  # the defaults
       (TileConfig(32, 64, 4, 2), TileConfig(64, 32, 4, 2)),
       (TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
       (TileConfig(32, 128, 8, 2), TileConfig(128, 32, 8, 2)),
       (TileConfig(64, 128, 8, 2), TileConfig(128, 64, 8, 2)),
       (TileConfig(16, 64, 4, 3), TileConfig(64, 16, 4, 3))]


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def fmt(c: TileConfig) -> str:
    return f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages or '-'}"


def main() -> None:
    dev = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {dev}, bf16, H=12, Dh=64, 70% masking; times: do_bench medians (ms)\n")
    for tokens, batch in ((196, 256), (1568, 32)):
        q, k, v, cu, longest, mask = inputs = make_inputs(batch, tokens, "cuda", torch.bfloat16)
        qp, kp, vp, *_ = padded(inputs)
        scale = q.shape[-1] ** -0.5
        mode = _resolve_mode("auto", longest)
        print(f"## N = {tokens}, B = {batch}, {q.shape[0]} visible tokens, longest {longest}, mode {mode}\n")
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        pleaves = [t.detach().requires_grad_(True) for t in (qp, kp, vp)]
        g = torch.randn_like(q)
        gp = torch.randn_like(qp)

        def ours_fb():
            varlen_attention(*leaves, cu, longest, backend="triton", validate=False).backward(g)

        def sdpa_fb():
            F.scaled_dot_product_attention(*pleaves, attn_mask=mask[:, None, None, :]).backward(gp)

        sdpa_f = bench(lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:, None, None, :]))
        sdpa_b = bench(sdpa_fb)
        rows = [("padded SDPA + mask", sdpa_f, sdpa_b),
                ("varlen_attention (autograd.Function)",
                 bench(lambda: varlen_attention(q, k, v, cu, longest, backend="triton", validate=False)), bench(ours_fb)),
                ("forward kernel called directly, default tiles",
                 bench(lambda: triton_varlen_fwd(q, k, v, cu, longest, scale, mode)), float("nan"))]
        print("| path | fwd ms | fwd vs SDPA | fwd+bwd ms | fwd+bwd vs SDPA |")
        print("|---|---|---|---|---|")
        for name, f, b in rows:
            print(f"| {name} | {f:.3f} | {sdpa_f / f:.2f}x | {b:.3f} | {sdpa_b / b:.2f}x |")
        print()
        ref_out, lse = triton_varlen_fwd(q, k, v, cu, longest, scale, mode)
        print(f"default forward tiles {fmt(fwd_config(64, torch.bfloat16))}, backward "
              f"{' / '.join(fmt(c) for c in bwd_configs(64, torch.bfloat16))}\n")
        print("| forward tiles | ms | speed vs SDPA fwd | max abs diff vs default |")
        print("|---|---|---|---|")
        for c in FWD:
            try:
                out, _ = triton_varlen_fwd(q, k, v, cu, longest, scale, mode, config=c)
                t = bench(lambda c=c: triton_varlen_fwd(q, k, v, cu, longest, scale, mode, config=c))
                print(f"| {fmt(c)} | {t:.3f} | {sdpa_f / t:.2f}x | {(out - ref_out).abs().max().item():.1e} |")
            except Exception as err:  # compile failures (shared memory, registers) are results too
                print(f"| {fmt(c)} | failed: {type(err).__name__}: {str(err)[:80]} | | |")
        print()
        ref = triton_varlen_bwd(g, q, k, v, ref_out, lse, cu, longest, scale, mode)
        fwd_t = bench(lambda: triton_varlen_fwd(q, k, v, cu, longest, scale, mode))
        print("| backward tiles (dK/dV ; dQ) | bwd ms | default fwd + this bwd, vs SDPA fwd+bwd | max abs diff vs default |")
        print("|---|---|---|---|")
        for cs in BWD:
            name = "default" if cs is None else f"{fmt(cs[0])} ; {fmt(cs[1])}"
            try:
                grads = triton_varlen_bwd(g, q, k, v, ref_out, lse, cu, longest, scale, mode, configs=cs)
                t = bench(lambda cs=cs: triton_varlen_bwd(g, q, k, v, ref_out, lse, cu, longest, scale, mode, configs=cs))
                diff = max((a - b).abs().max().item() for a, b in zip(grads, ref))
                print(f"| {name} | {t:.3f} | {sdpa_b / (fwd_t + t):.2f}x | {diff:.1e} |")
            except Exception as err:
                print(f"| {name} | failed: {type(err).__name__}: {str(err)[:80]} | | |")
        print(flush=True)


if __name__ == "__main__":
    main()
