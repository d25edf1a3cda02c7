"""Packed (varlen) attention over visible tokens vs padded attention, at 70% masking.

Commands:
    .venv/bin/python benchmarks/bench_attention.py                  # CPU: reference backend vs padded SDPA (~3 min)
    .venv/bin/python benchmarks/bench_attention.py --device cuda    # GPU: Triton vs padded SDPA / FlexAttention /
                                                                    # flash_attn_varlen_func (if installed)
    .venv/bin/python benchmarks/bench_attention.py --device cuda --check   # GPU correctness (Triton vs fp64)
    .venv/bin/python benchmarks/bench_attention.py --device cuda --e2e     # GPU: forward+backward through autograd,
                                                                           # every path, host overhead counted
    .venv/bin/python benchmarks/bench_attention.py --device cuda --profile # GPU: host vs device time per call
    .venv/bin/python benchmarks/bench_attention.py --device cuda --models  # GPU: DeeperBrain / SLIM-Brain training
                                                                           # steps, backend triton vs sdpa
    .venv/bin/python benchmarks/bench_attention.py --models --steps 1      # CPU smoke test of --models (tiny
                                                                           # recipes, reference vs sdpa)

Workload: B samples of N tokens (196 = 14x14 ViT patches, 1568 = 8x14x14 video
patches), each keeping a random 20-40% of its tokens (mean 30%, i.e. 70%
masking), H = 12 heads of Dh = 64. "packed" attends inside each sample's visible
tokens (``foundation.kernels.varlen_attention``); "padded SDPA" gets the same
tokens already padded to the largest visible count, [B, H, Kmax, Dh] (as an
encoder without packing would carry them, so padding is not timed), and a
boolean key-padding mask for ``torch.nn.functional.scaled_dot_product_attention``.

Time: on CPU the best of R runs (the machine is shared, so the minimum is the
least disturbed measurement), alternating implementations in one process, one
intra-op thread by default (--threads); on CUDA ``triton.testing.do_bench`` medians (CUDA events over
~100 ms of back-to-back calls: the GPU's time, with host overhead counted only where it starves the GPU;
an earlier version timed single calls with ``perf_counter`` and a synchronize, which also counted the host's
launch latency, see RESULTS.md). Peak memory on CPU: torch.profiler with ``profile_memory=True``, the
running sum of every event's own allocations minus frees in time order, i.e.
the peak of tensor memory allocated during the call above what existed before
it, at op granularity (``ru_maxrss`` is useless here: importing torch already
sets a higher high-water mark). On CUDA: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.kernels import seqlens_to_cu, unpack, varlen_attention  # noqa: E402

HEADS, HEAD_DIM = 12, 64


def make_inputs(batch: int, tokens: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Packed q, k, v [T, H, Dh] of the visible tokens, cu_seqlens, max_seqlen and the key-padding mask [B, Kmax].

    Each sample keeps round(N * U(0.2, 0.4)) tokens; which ones does not matter to attention, so
    the visible tokens are drawn directly in packed form (no padded [B, N, ...] temporary).
    """
    gen = torch.Generator().manual_seed(seed)
    counts = (tokens * (0.2 + 0.2 * torch.rand(batch, generator=gen))).round().long().clamp_min(1)
    cu = seqlens_to_cu(counts).to(device)
    total, longest = int(counts.sum()), int(counts.max())
    q, k, v = (torch.randn(total, HEADS, HEAD_DIM, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    mask = (torch.arange(longest)[None, :] < counts[:, None]).to(device)  # True = real token
    return q, k, v, cu, longest, mask


def packed_fn(backend: str):
    def run(q, k, v, cu, longest, mask):
        return varlen_attention(q, k, v, cu, longest, backend=backend, validate=False)

    return run


def padded(inputs):
    """The same tokens as a padded batch [B, H, Kmax, Dh], as an encoder without packing would carry them."""
    q, k, v, cu, longest, mask = inputs
    qp, kp, vp = (unpack(t, cu, longest)[0].transpose(1, 2).contiguous() for t in (q, k, v))  # -> [B, H, Kmax, Dh]
    return qp, kp, vp, cu, longest, mask


def padded_sdpa(qp, kp, vp, cu, longest, mask):
    """SDPA over the padded batch with the boolean key-padding mask (True = real token)."""
    return F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:, None, None, :])


def padded_sdpa_flash_nomask(qp, kp, vp, cu, longest, mask):
    """Speed bound: flash SDPA over the padded batch with no mask (padded keys are attended; not a correct result)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(qp, kp, vp)


def flex_document(q, k, v, cu, longest, mask):
    """FlexAttention over the packed buffer with a document mask; the block-mask build is included."""
    from torch.nn.attention.flex_attention import create_block_mask

    T = q.shape[0]
    lengths = (cu[1:] - cu[:-1]).long()
    doc = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=q.device), lengths, output_size=T)

    def same_doc(b, h, qi, ki):
        return doc[qi] == doc[ki]

    block_mask = create_block_mask(same_doc, None, None, T, T, device=q.device)
    qf, kf, vf = (t.transpose(0, 1)[None] for t in (q, k, v))  # [T, H, Dh] -> [1, H, T, Dh]
    return _compiled_flex()(qf, kf, vf, block_mask=block_mask)[0].transpose(0, 1)


_FLEX = []


def _compiled_flex():
    if not _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _FLEX[0]


def flash_attn_varlen(q, k, v, cu, longest, mask):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, inputs, backward: bool, device: str, repeats: int) -> list[float]:
    q, k, v, *rest = inputs
    times = []
    for _ in range(repeats):
        leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
        _sync(device)
        start = time.perf_counter()
        out = fn(*leaves, *rest)
        if backward:
            out.backward(torch.ones_like(out))
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def cuda_time(fn, inputs, backward: bool) -> float:
    """Seconds per call on the GPU: ``triton.testing.do_bench`` median (CUDA events), gradients reset per call."""
    from triton.testing import do_bench

    q, k, v, *rest = inputs
    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
    grad = torch.ones_like(fn(*leaves, *rest)) if backward else None

    def call() -> None:
        out = fn(*leaves, *rest)
        if backward:
            out.backward(grad)

    return do_bench(call, warmup=25, rep=100, grad_to_none=leaves if backward else None, return_mode="median") / 1e3


def attention_flops(cu: torch.Tensor, backward: bool) -> float:
    lens = (cu[1:] - cu[:-1]).double()
    fwd = 4 * float((lens**2).sum()) * HEADS * HEAD_DIM
    return fwd * (3.5 if backward else 1.0)  # backward = 2.5 x forward (FlashAttention convention)


def profiler_peak(fn) -> int:
    """Peak bytes allocated above the starting point while fn() runs, from torch.profiler memory events.

    Every profiler event carries the bytes its own code allocated minus freed
    (``self_cpu_memory_usage``; frees outside any op come as "[memory]" events); their
    running sum in start-time order is the live allocation timeline at op granularity.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


CPU_IMPLS = {"packed (reference)": (packed_fn("reference"), False), "padded SDPA + mask": (padded_sdpa, True)}


def run_cpu(repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, H={HEADS}, Dh={HEAD_DIM}, 70% masking")
    print("| N | B | pass | packed ms | padded SDPA ms | speed-up (padded/packed) | packed peak MiB | padded peak MiB "
          "| memory ratio (packed/padded) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tokens, batch in ((196, 32), (1568, 8)):
        packed_inputs = make_inputs(batch, tokens, "cpu", torch.float32)
        padded_inputs = padded(packed_inputs)
        for backward in (False, True):
            ms = {name: [] for name in CPU_IMPLS}
            for name, (fn, pad) in CPU_IMPLS.items():
                timed(fn, padded_inputs if pad else packed_inputs, backward, "cpu", 1)  # warm-up
            for _ in range(repeats):  # alternate so that load from other jobs hits both alike
                for name, (fn, pad) in CPU_IMPLS.items():
                    ms[name] += timed(fn, padded_inputs if pad else packed_inputs, backward, "cpu", 1)
            t_packed, t_padded = (min(ms[n]) * 1e3 for n in CPU_IMPLS)
            m_packed, m_padded = (
                profiler_peak(lambda f=fn, a=(padded_inputs if pad else packed_inputs): timed(f, a, backward, "cpu", 1))
                / 2**20
                for fn, pad in CPU_IMPLS.values()
            )
            label = "fwd+bwd" if backward else "fwd"
            print(f"| {tokens} | {batch} | {label} | {t_packed:.1f} | {t_padded:.1f} | {t_padded / t_packed:.2f}x "
                  f"| {m_packed:.1f} | {m_padded:.1f} | {m_packed / max(m_padded, 1e-9):.2f} |")


def run_cuda() -> None:
    impls = {"triton varlen": (packed_fn("triton"), False), "padded SDPA + mask": (padded_sdpa, True),
             "padded SDPA flash (no mask)": (padded_sdpa_flash_nomask, True),
             "FlexAttention doc mask (+build)": (flex_document, False)}
    try:
        import flash_attn  # noqa: F401

        impls["flash_attn_varlen_func"] = (flash_attn_varlen, False)
    except ImportError:
        print("flash_attn not installed: no flash_attn_varlen_func column")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16, H={HEADS}, Dh={HEAD_DIM}, 70% masking")
    print("| N | B | pass | implementation | ms | TFLOP/s | peak MiB | time vs triton |")
    print("|---|---|---|---|---|---|---|---|")
    for tokens, batch in ((196, 256), (1568, 32)):
        inputs = make_inputs(batch, tokens, "cuda", torch.bfloat16)
        padded_inputs = padded(inputs)
        for backward in (False, True):
            rows = {}
            for name, (fn, pad) in impls.items():
                args = padded_inputs if pad else inputs
                timed(fn, args, backward, "cuda", 3)  # warm-up / compile
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                timed(fn, args, backward, "cuda", 1)  # peak memory of one call (do_bench adds its L2-flush buffer)
                mem = (torch.cuda.max_memory_allocated() - base) / 2**20
                rows[name] = (cuda_time(fn, args, backward), mem)
            ref = rows["triton varlen"][0]
            for name, (t, mem) in rows.items():
                tflops = attention_flops(inputs[3], backward) / t / 1e12
                print(f"| {tokens} | {batch} | {'fwd+bwd' if backward else 'fwd'} | {name} | {t * 1e3:.3f} "
                      f"| {tflops:.1f} | {mem:.0f} | {t / ref:.2f} |")


def run_check() -> None:
    """Triton on CUDA against fp64: error <= 2x plain torch error (+1e-6 for fp32), fwd and grads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.kernels._helpers import forward_backward, max_errors, packed_case, plain_attention

    failures = 0
    for lens, heads, dim, dtype in (([1, 50, 7, 300, 3], 4, 64, torch.bfloat16),
                                    ([1, 2, 9, 40] * 8, 2, 32, torch.float16),
                                    ([129, 1, 700], 3, 128, torch.float32), ([5] * 60, 4, 64, torch.bfloat16)):
        q, k, v, do, cu = (t.cuda() for t in packed_case(lens, heads, dim, dtype, seed=len(lens)))
        scale = dim**-0.5
        qd, kd, vd = q.double(), k.double(), v.double()
        exact = forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), qd, kd, vd, do)
        plain = forward_backward(lambda a, b, c: plain_attention(a, b, c, cu, scale), q, k, v, do)
        # strided: q, k, v views of one [T, 3, H, Dh] buffer and dO with a padded head axis (no copies since issue 17)
        do_strided = torch.cat([do, do[:, :1]], dim=1)[:, :heads]  # [T, H, Dh], token stride (H + 1) * Dh
        for mode, strided in (("sequence", False), ("packed", False), ("sequence", True), ("packed", True)):
            def kernel(a, b, c, mode=mode, strided=strided):
                if strided:
                    a, b, c = torch.stack([a, b, c], dim=1).unbind(1)  # 3 x [T, H, Dh], token stride 3 * H * Dh
                return varlen_attention(a, b, c, cu, max(lens), backend="triton", mode=mode)

            got = forward_backward(kernel, q, k, v, do_strided if strided else do)
            errs, base = max_errors(got, exact), max_errors(plain, exact)
            floor = 1e-6 if dtype == torch.float32 else 0.0
            ok = all(e <= 2 * b + floor for e, b in zip(errs, base))
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {dtype} Dh={dim} H={heads} S={len(lens)} {mode}"
                  f"{' strided' if strided else ''}: kernel {[f'{e:.2e}' for e in errs]} vs plain "
                  f"{[f'{b:.2e}' for b in base]}")
    if failures:
        raise SystemExit(f"{failures} check(s) failed")


def custom_op_fn(q, k, v, cu, longest, mask):
    """The eager path before issue 17: the torch.library custom op through its registered autograd."""
    return torch.ops.foundation.varlen_attn_fwd(q, k, v, cu, longest, q.shape[-1] ** -0.5, "triton", "auto", False)[0]


def qkv_views_fn(q, k, v, cu, longest, mask):
    """varlen_attention on q, k, v sliced out of one [T, 3, H, Dh] buffer, as ``Attention`` passes them."""
    qs, ks, vs = torch.stack([q, k, v], dim=1).unbind(1)  # 3 x [T, H, Dh], token stride 3 * H * Dh
    return varlen_attention(qs, ks, vs, cu, longest, backend="triton")


def torch_varlen_fn(q, k, v, cu, longest, mask):
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, cu, cu, longest, longest)


def graphed_fn(inputs):
    """varlen_attention captured in CUDA graphs (forward and backward) for these shapes and this cu_seqlens."""
    q, k, v, cu, longest, mask = inputs
    leaves = tuple(t.detach().requires_grad_(True) for t in (q, k, v))
    graphed = torch.cuda.make_graphed_callables(
        lambda a, b, c: varlen_attention(a, b, c, cu, longest, backend="triton"), leaves
    )

    def run(q, k, v, cu, longest, mask):
        return graphed(q, k, v)

    return run


def loop_time(fn, inputs, calls: int = 30) -> tuple[float, float]:
    """(GPU seconds per call, host seconds per call) of ``calls`` back-to-back forward+backward calls.

    CUDA events around the whole loop: no cache flush and no synchronisation between calls, as in a training
    step, so whichever of host and device is slower sets the time. The host time is the Python loop's own
    wall time (the device queue is deep enough that launching does not wait for it).
    """
    q, k, v, *rest = inputs
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    grad = torch.ones_like(fn(*leaves, *rest))
    for _ in range(3):
        fn(*leaves, *rest).backward(grad)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(calls):
        for t in leaves:
            t.grad = None
        fn(*leaves, *rest).backward(grad)
    host = time.perf_counter() - t0
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / calls, host / calls


def run_e2e() -> None:
    """Forward+backward through autograd, every path, bf16: the issue-17 table (target >= 1.3x padded SDPA)."""
    impls = {"varlen_attention (autograd.Function)": (packed_fn("triton"), False),
             "varlen_attention, q/k/v views of qkv": (qkv_views_fn, False),
             "custom op + registered autograd (before)": (custom_op_fn, False),
             "varlen_attention in CUDA graphs": (None, False),
             "varlen_attention backend='sdpa' (pad per call)": (packed_fn("sdpa"), False),
             "padded SDPA + mask (pre-padded)": (padded_sdpa, True)}
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        impls["torch.nn.attention.varlen.varlen_attn"] = (torch_varlen_fn, False)
    except ImportError as err:
        print(f"torch {torch.__version__} has no torch.nn.attention.varlen ({err}): no column for it")
    try:
        import flash_attn  # noqa: F401

        impls["flash_attn_varlen_func"] = (flash_attn_varlen, False)
    except ImportError:
        print("flash_attn not installed: no flash_attn_varlen_func row")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16, H={HEADS}, Dh={HEAD_DIM}, 70% masking, "
          "forward+backward through autograd")
    print("loop: CUDA events around 30 back-to-back calls (host overhead counts where it starves the GPU); "
          "host: the Python loop's wall time per call; do_bench: median with an L2 flush between calls\n")
    print("| N | B | implementation | loop ms | host ms | do_bench ms | TFLOP/s (loop) | peak MiB | speed-up vs padded "
          "SDPA (loop) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tokens, batch in ((196, 256), (1568, 32)):
        inputs = make_inputs(batch, tokens, "cuda", torch.bfloat16)
        padded_inputs = padded(inputs)
        rows = {}
        for name, (fn, pad) in impls.items():
            args = padded_inputs if pad else inputs
            try:
                fn = graphed_fn(inputs) if fn is None else fn
                timed(fn, args, True, "cuda", 3)  # warm-up / compile
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                timed(fn, args, True, "cuda", 1)
                mem = (torch.cuda.max_memory_allocated() - base) / 2**20
                rows[name] = (*loop_time(fn, args), cuda_time(fn, args, True), mem)
            except Exception as err:  # a path that does not run on this machine is a result too
                print(f"| {tokens} | {batch} | {name} | failed: {type(err).__name__}: {str(err)[:100]} | | | | | |")
        ref = rows.get("padded SDPA + mask (pre-padded)", (float("nan"),))[0]
        for name, (loop, host, bench, mem) in rows.items():
            tflops = attention_flops(inputs[3], True) / loop / 1e12
            print(f"| {tokens} | {batch} | {name} | {loop * 1e3:.3f} | {host * 1e3:.3f} | {bench * 1e3:.3f} "
                  f"| {tflops:.1f} | {mem:.0f} | {ref / loop:.2f}x |")


def run_profile() -> None:
    """Where a forward+backward of varlen_attention spends its time: torch.profiler, host and device."""
    from torch.profiler import ProfilerActivity, profile

    for tokens, batch in ((196, 256), (1568, 32)):
        inputs = make_inputs(batch, tokens, "cuda", torch.bfloat16)
        fn = packed_fn("triton")
        loop, host = loop_time(fn, inputs)
        print(f"\n## N = {tokens}, B = {batch}: loop {loop * 1e3:.3f} ms/call, host {host * 1e3:.3f} ms/call\n")
        q, k, v, *rest = inputs
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        grad = torch.ones_like(q)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn(*leaves, *rest).backward(grad)
            torch.cuda.synchronize()
        print("```")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
        print("```")


def _model_batch(name: str, recipe, model, batch: int, device: str) -> dict:
    """Random inputs of the recipe's geometry whose samples keep different token counts: EEG windows with 19-64
    real channels; fMRI windows with 60-100% of their mask units in the foreground."""
    gen = torch.Generator().manual_seed(0)
    if name.startswith("deeperbrain"):
        data = recipe.data.config
        C, T = 64, int(data.window_seconds * data.preprocess.sfreq)
        real = torch.randint(19, C + 1, (batch,), generator=gen)
        out = {"x": torch.randn(batch, C, T, generator=gen), "pos": torch.randn(batch, C, 3, generator=gen),
               "chan_mask": torch.arange(C)[None, :] < real[:, None],
               "stats": torch.randn(batch, C, recipe.model.config.n_stats, generator=gen)}
    else:
        U = model.encoder.n_units
        frac = 0.6 + 0.4 * torch.rand(batch, 1, generator=gen)
        out = {"x": torch.randn(batch, 1, *recipe.model.config.input_size, generator=gen),
               "unit_fg": torch.rand(batch, U, generator=gen) < frac}
    return {k: v.to(device) for k, v in out.items()}


def _train_step(module, data: dict, device: str):
    """One training step of ``module`` on ``data``: bf16 autocast forward, backward, AdamW, the step-end hook."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, _ = module(data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.on_step_end(1)

    return step


def run_models(steps: int, device: str = "cuda", tiny: bool = False) -> None:
    """Training steps (forward, backward, AdamW) under bf16 autocast, the attention backend switched by config."""
    from foundation.config import load_recipe
    from foundation.pretrain.components import TrainModule, build_model, build_objective

    cases = {"deeperbrain": ("model.attention_backend", 64), "slim-brain": ("model.backend", 4)}
    cuda = device == "cuda"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'cpu'}, bf16 autocast, AdamW, "
          f"{steps} steps after 2 warm-ups; step time: wall time of the steps, synchronised at both ends; peak = "
          "max_memory_allocated above the start\n")
    print("| recipe | micro-batch | backend | ms/step | samples/s | peak MiB | speed-up vs sdpa |")
    print("|---|---|---|---|---|---|---|")
    for name, (key, batch) in cases.items():
        name, batch = (f"{name}-tiny", 2) if tiny else (name, batch)
        results = {}
        for backend in ("sdpa", "triton" if cuda else "reference"):
            recipe = load_recipe(name, [f"{key}={backend}"])
            torch.manual_seed(0)
            module = TrainModule(build_model(recipe), build_objective(recipe)).to(device)
            data = _model_batch(name, recipe, module.model, batch, device)
            step = _train_step(module, data, device)
            try:
                for _ in range(2):
                    step()
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() if cuda else 0
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                if cuda:
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / steps * 1e3
                results[backend] = (ms, (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan"))
            except Exception as err:  # a failing configuration is a result too
                print(f"| {name} | {batch} | {backend} | failed: {type(err).__name__}: {str(err)[:120]} | | | |")
            module = data = step = None  # free before the next model
            if cuda:
                torch.cuda.empty_cache()
        for backend, (ms, mib) in results.items():
            ratio = results["sdpa"][0] / ms if "sdpa" in results else float("nan")
            print(f"| {name} | {batch} | {backend} | {ms:.1f} | {batch / ms * 1e3:.1f} | {mib:.0f} | {ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7, help="CPU: timed runs per implementation (CUDA: do_bench)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--check", action="store_true", help="CUDA correctness check instead of timing")
    parser.add_argument("--e2e", action="store_true", help="CUDA: forward+backward through autograd, every path")
    parser.add_argument("--profile", action="store_true", help="CUDA: torch.profiler of varlen_attention fwd+bwd")
    parser.add_argument("--models", action="store_true", help="CUDA: model training steps, triton vs sdpa backend")
    parser.add_argument("--steps", type=int, default=5, help="--models: timed steps per model and backend")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        run_check()
    elif args.e2e:
        run_e2e()
    elif args.profile:
        run_profile()
    elif args.models:
        run_models(args.steps, args.device, tiny=args.device == "cpu")
    elif args.device == "cuda":
        run_cuda()
    else:
        run_cpu(args.repeats)


if __name__ == "__main__":
    main()
