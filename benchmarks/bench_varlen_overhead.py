"""Host-side cost per call of ``varlen_attention`` on CPU: tiny sizes, the reference backend.

At 2 sequences of 3 and 5 tokens (H = 2, Dh = 16, fp32) the arithmetic is a few microseconds, so the time
per call is the Python and dispatch work around the kernels: the same work that sits around the Triton
launches on a GPU (issue 17: 0.5-0.8 ms of it per forward+backward at the H200 sizes).

    # one tree, one table (rows that the tree lacks are skipped)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_varlen_overhead.py
    # before / after: alternate two checkouts of foundation/ (the older one exported with git archive),
    # append each run's rows to one JSON-lines file, then print the table of the best of each
    for i in 1 2 3; do
      PYTHONPATH=/tmp/old .venv/bin/python benchmarks/bench_varlen_overhead.py --label before --jsonl o.jsonl
      PYTHONPATH=.        .venv/bin/python benchmarks/bench_varlen_overhead.py --label after  --jsonl o.jsonl
    done
    .venv/bin/python benchmarks/bench_varlen_overhead.py --table o.jsonl
    # the same with --stub on every run: the wrapper alone, no arithmetic

Rows (fwd = forward without grad; fwd+bwd = forward with grad on q, k, v and ``backward``):

* ``direct``: ``reference_varlen_fwd`` (+ ``reference_varlen_bwd``) called as plain functions, no autograd:
  the floor, the arithmetic plus nothing;
* ``custom op``: ``torch.ops.foundation.varlen_attn_fwd`` through its ``register_autograd`` formula (the
  eager path before issue 17, and the ``torch.compile`` path after it), no argument checks;
* ``varlen_attention(validate=False)`` and ``varlen_attention()`` (the default: before issue 17 it validated
  cu_seqlens on every call, after it only when asked) and ``varlen_attention(validate=True)``;
* ``SDPA, one sequence``: ``F.scaled_dot_product_attention`` on [1, H, 8, Dh], one C++ call, for scale.

``--stub`` replaces the reference maths by output allocations (in the namespace the wrapper calls it from),
leaving the wrapper's own host work: what surrounds the asynchronous kernel launches on a GPU. It also adds
``varlen_attention(backend="triton")`` with the four Triton kernels replaced by no-op launches (q, k, v strided
views of one qkv buffer, as ``Attention`` passes them): the Python of ``triton_varlen_fwd`` / ``_bwd`` around
the launches (allocations, copies, grids, segment ids), without Triton's own launch cost.

Each figure is the best over rounds of the median of 200-call batches (one intra-op thread), in microseconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import foundation.kernels.varlen as varlen_mod
from foundation.kernels.reference import reference_varlen_bwd, reference_varlen_fwd
from foundation.kernels.varlen import varlen_attention

LENS, HEADS, HEAD_DIM = (3, 5), 2, 16
STUB = "--stub" in sys.argv
if STUB:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported


def _inputs():
    gen = torch.Generator().manual_seed(0)
    T = sum(LENS)
    q, k, v, do = (torch.randn(T, HEADS, HEAD_DIM, generator=gen) for _ in range(4))
    cu = torch.tensor([0, LENS[0], T], dtype=torch.int32)
    return q, k, v, do, cu


def _stub_arithmetic() -> None:
    """Replace the reference maths by output allocations only, in the namespace the wrapper calls it from
    (both trees call ``reference_varlen_fwd`` / ``_bwd`` through ``foundation.kernels.varlen``): what remains is
    the wrapper's own host work, as on a GPU where the kernels run asynchronously."""

    def fwd(q, k, v, cu, scale, aten_cpu=True):
        return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    def bwd(do, q, k, v, out, lse, cu, scale, aten_cpu=True):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    global reference_varlen_fwd, reference_varlen_bwd
    varlen_mod.reference_varlen_fwd = reference_varlen_fwd = fwd
    varlen_mod.reference_varlen_bwd = reference_varlen_bwd = bwd

    class NoLaunch:  # kernel[grid](*args, **meta) does nothing
        def __getitem__(self, grid):
            return lambda *args, **meta: None

    import foundation.kernels.triton_varlen as tv  # TRITON_INTERPRET=1 is set: CPU tensors pass the device check

    for name in ("_fwd_kernel", "_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        setattr(tv, name, NoLaunch())


def _rows():
    """name -> (forward callable, forward+backward callable)."""
    q, k, v, do, cu = _inputs()
    scale = HEAD_DIM**-0.5
    m = max(LENS)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    op = torch.ops.foundation.varlen_attn_fwd

    def direct_f():
        reference_varlen_fwd(q, k, v, cu, scale)

    def direct_fb():
        out, lse = reference_varlen_fwd(q, k, v, cu, scale)
        reference_varlen_bwd(do, q, k, v, out, lse, cu, scale)

    def op_f():
        op(q, k, v, cu, m, scale, "reference", "auto", False)

    def op_fb():
        out, _ = op(*leaves, cu, m, scale, "reference", "auto", False)
        out.backward(do)

    def va(**kw):
        def f():
            varlen_attention(q, k, v, cu, m, backend="reference", **kw)

        def fb():
            varlen_attention(*leaves, cu, m, backend="reference", **kw).backward(do)

        return f, fb

    qs, ks, vs, dos = (t.transpose(0, 1)[None] for t in (q, k, v, do))  # [T, H, Dh] -> [1, H, T, Dh]
    sleaves = [t.clone().requires_grad_(True) for t in (qs, ks, vs)]
    grads = leaves + sleaves  # leaves whose .grad is reset between batches

    def sdpa_f():
        F.scaled_dot_product_attention(qs, ks, vs)

    def sdpa_fb():
        F.scaled_dot_product_attention(*sleaves).backward(dos)

    rows = {"direct (functions, no autograd)": (direct_f, direct_fb), "custom op (torch.ops, autograd)": (op_f, op_fb),
            "varlen_attention(validate=False)": va(validate=False), "varlen_attention() default": va()}
    if hasattr(varlen_mod, "VarlenAttentionFunction"):  # the tree after issue 17
        rows["varlen_attention(validate=True)"] = va(validate=True)
    if STUB:  # the Triton wrapper around its launches, q, k, v strided views of one qkv buffer as in Attention
        qkv = torch.stack([q, k, v], dim=1).requires_grad_(True)  # [T, 3, H, Dh]

        def tri(mode):
            def f():
                varlen_attention(*qkv.detach().unbind(1), cu, m, backend="triton", mode=mode)

            def fb():
                varlen_attention(*qkv.unbind(1), cu, m, backend="triton", mode=mode).backward(do)

            return f, fb

        rows["triton wrapper, launches stubbed, sequence"] = tri("sequence")
        rows["triton wrapper, launches stubbed, packed"] = tri("packed")
        grads.append(qkv)
    rows["SDPA, one sequence"] = (sdpa_f, sdpa_fb)
    return rows, grads


def _per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(batches: int, calls: int) -> dict[str, list[float]]:
    rows, leaves = _rows()
    for f, fb in rows.values():  # warm-up
        for _ in range(20):
            f()
            fb()
    times = {f"{name}|{p}": [] for name in rows for p in ("fwd", "fwd+bwd")}
    for _ in range(batches):  # interleave rows so that load from other jobs hits all alike
        for name, (f, fb) in rows.items():
            times[f"{name}|fwd"].append(_per_call_us(f, calls))
            times[f"{name}|fwd+bwd"].append(_per_call_us(fb, calls))
            for t in leaves:
                t.grad = None
    return {key: statistics.median(v) for key, v in times.items()}


def print_table(records: list[dict]) -> None:
    labels = list(dict.fromkeys(r["label"] for r in records))
    best: dict[tuple[str, str], float] = {}
    for r in records:
        for key, us in r["us"].items():
            best[(r["label"], key)] = min(us, best.get((r["label"], key), float("inf")))
    keys = list(dict.fromkeys(k for r in records for k in r["us"]))
    rounds = {lab: sum(r["label"] == lab for r in records) for lab in labels}
    print(f"best of {', '.join(f'{rounds[lab]} {lab}' for lab in labels)} rounds; microseconds per call\n")
    head = "| path | pass | " + " | ".join(f"{lab} us" for lab in labels)
    head += " | " + " | ".join(f"{lab}/{labels[0]}" for lab in labels[1:]) + " |" if len(labels) > 1 else " |"
    print(head)
    print("|---|---|" + "---|" * (2 * len(labels) - 1))
    for key in keys:
        name, p = key.split("|")
        vals = [best.get((lab, key)) for lab in labels]
        cells = [f"{v:.0f}" if v is not None else "-" for v in vals]
        ratios = [f"{v / vals[0]:.2f}" if v is not None and vals[0] is not None else "-" for v in vals[1:]]
        print(f"| {name} | {p} | " + " | ".join(cells + ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=7, help="batches per row (interleaved)")
    parser.add_argument("--calls", type=int, default=200, help="calls per batch")
    parser.add_argument("--stub", action="store_true",
                        help="replace the reference maths by output allocations: the wrapper's own host cost")
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--jsonl", default=None, help="append this run's medians to this file instead of printing")
    parser.add_argument("--table", default=None, help="print the table of a --jsonl file and exit")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as fh:
            print_table([json.loads(line) for line in fh if line.strip()])
        return
    torch.set_num_threads(1)
    if args.stub:
        _stub_arithmetic()
    record = {"label": args.label, "torch": torch.__version__, "us": measure(args.batches, args.calls)}
    if args.jsonl:
        with open(args.jsonl, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    else:
        print_table([record])


if __name__ == "__main__":
    main()
