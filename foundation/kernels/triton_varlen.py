"""Triton kernels for packed variable-length attention, forward and backward.

FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning", https://arxiv.org/abs/2307.08691) for packed
visible tokens: online softmax in base 2 (exp2, scores pre-multiplied by
scale * log2(e)), fp32 accumulators, the log-sum-exp of each row saved for the
backward. The backward runs a Delta pre-pass (Delta = rowsum(dO * O)), then one
kernel that owns a key block and accumulates dK, dV over query blocks, and one
that owns a query block and accumulates dQ over key blocks: every output tile
has exactly one writer, so there are no atomics.

Two tilings of the same maths:

* sequence mode: one program per (sequence, head, query block), keys from that
  sequence only. Good for long sequences.
* packed mode: programs tile the packed buffer itself (block i covers packed rows
  [i*BM, (i+1)*BM) whatever sequences they belong to); the key range is the union
  of the sequences in the tile and scores are masked where the segment ids of row
  and column differ. Good for many short sequences, which would otherwise leave
  most of every query block empty.

Layout: q, k, v [T, H, Dh] (last dim contiguous), cu_seqlens [S + 1] int32,
lse and Delta [H, T] fp32 (natural-log lse, the same as the reference). Set
``TRITON_INTERPRET=1`` before triton is first imported to run on CPU tensors.
Tile sizes: :func:`fwd_config` and :func:`bwd_configs`, chosen per head dim and dtype from a measured sweep
for 16-bit inputs with head dim <= 64 (``benchmarks/sweep_varlen_tiles.py``), heuristics otherwise; not
autotuned at run time. Every kernel call also takes an explicit ``TileConfig``.

Host side, per call: no synchronisation with the device, no copy of inputs whose last
dim is contiguous (q, k, v straight from ``qkv.unbind`` are strided views: every
tensor passes its own token and head strides), tile choices, grids and compile-time
arguments looked up from caches keyed by shape, and the segment ids of the packed
tiling built once per forward or backward.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "foundation.kernels.triton_varlen needs the 'triton' package (pip install triton); "
        "use varlen_attention(..., backend='reference') without it"
    ) from err

__all__ = ["triton_varlen_fwd", "triton_varlen_bwd", "TileConfig", "fwd_config", "bwd_configs", "INTERPRETED"]

_LOG2E = 1.4426950408889634


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation. UPCAST (interpreter + bf16 only): the interpreter's bf16
    dot is wrong, so operands go to fp32 first; bf16 x bf16 products are exact in fp32, so this
    matches a bf16 tensor-core dot up to summation order."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _to(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """Cast fp32 x to dtype with round-to-nearest-even. On the GPU that is what ``.to`` does;
    the interpreter truncates fp32 -> bf16 (doubling the rounding error), so with UPCAST
    (interpreter + bf16) the rounding is done on the bits first and the cast is then exact."""
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _bounds(pid, CU, SEG, T, H, NUM_BLOCKS, BLOCK: tl.constexpr, PACKED: tl.constexpr):
    """(head, first own row, end of own rows, lo, hi of the attended range) of a program."""
    bh = pid // NUM_BLOCKS
    blk = pid % NUM_BLOCKS
    if PACKED:
        h = bh
        r0 = blk * BLOCK
        r_end = tl.minimum(r0 + BLOCK, T)
        first = tl.load(SEG + r0)
        last = tl.load(SEG + r_end - 1)
        lo = tl.load(CU + first)
        hi = tl.load(CU + last + 1)
    else:
        b = bh // H
        h = bh % H
        lo = tl.load(CU + b)
        hi = tl.load(CU + b + 1)
        r0 = lo + blk * BLOCK
        r_end = hi
    return h, r0, r_end, lo, hi


@triton.jit
def _valid(rows, cols, row_ok, col_ok, SEG, PACKED: tl.constexpr):
    """[rows, cols] mask of allowed (query, key) pairs."""
    ok = row_ok[:, None] & col_ok[None, :]
    if PACKED:
        seg_r = tl.load(SEG + rows, mask=row_ok, other=-1)
        seg_c = tl.load(SEG + cols, mask=col_ok, other=-2)
        ok = ok & (seg_r[:, None] == seg_c[None, :])
    return ok


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, CU, SEG,
    sqt, sqh, skt, skh, svt, svh, sot, soh,
    T, H, NUM_BLOCKS, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    h, m0, m_end, lo, hi = _bounds(tl.program_id(0), CU, SEG, T, H, NUM_BLOCKS, BLOCK_M, PACKED)
    if m0 < m_end:
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < m_end
        q = tl.load(Q + offs_m[:, None] * sqt + h * sqh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = offs_n < hi
            k = tl.load(K + offs_n[:, None] * skt + h * skh + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            v = tl.load(V + offs_n[:, None] * svt + h * svh + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            s = _mm(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # [BM, BN], log2 units
            s = tl.where(_valid(offs_m, offs_n, row_ok, col_ok, SEG, PACKED), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _mm(_to(p, v.dtype, UPCAST), v, PRECISION, UPCAST)
            m_i = m_new
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        o_ptr = O + offs_m[:, None] * sot + h * soh + offs_d[None, :]
        tl.store(o_ptr, _to(out, O.dtype.element_ty, UPCAST), mask=row_ok[:, None])
        lse = (m_i + tl.math.log2(l_safe)) * 0.6931471805599453  # back to natural log
        tl.store(LSE + h * T + offs_m, lse, mask=row_ok)


@triton.jit
def _delta_kernel(O, DO, DELTA, sot, soh, sdt, sdh, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta [H, T] = rowsum(dO * O) in fp32."""
    h = tl.program_id(1)
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m < T
    o = tl.load(O + offs_m[:, None] * sot + h * soh + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + offs_m[:, None] * sdt + h * sdh + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + h * T + offs_m, tl.sum(o * do, 1), mask=ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU, SEG,
    sqt, sqh, skt, skh, svt, svh, sdt, sdh, sgt, sgh,
    T, H, NUM_BLOCKS, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    h, n0, n_end, lo, hi = _bounds(tl.program_id(0), CU, SEG, T, H, NUM_BLOCKS, BLOCK_N, PACKED)
    if n0 < n_end:
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < n_end
        k = tl.load(K + offs_n[:, None] * skt + h * skh + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + offs_n[:, None] * svt + h * svh + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        for m0 in range(lo, hi, BLOCK_M):
            offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
            row_ok = offs_m < hi
            q = tl.load(Q + offs_m[:, None] * sqt + h * sqh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + offs_m[:, None] * sdt + h * sdh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            lse2 = tl.load(LSE + h * T + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + h * T + offs_m, mask=row_ok, other=0.0)
            s = _mm(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # [BM, BN]
            p = tl.where(_valid(offs_m, offs_n, row_ok, col_ok, SEG, PACKED), tl.math.exp2(s - lse2[:, None]), 0.0)
            dv += _mm(tl.trans(_to(p, do.dtype, UPCAST)), do, PRECISION, UPCAST)
            dp = _mm(do, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            dk += _mm(tl.trans(_to(ds, q.dtype, UPCAST)), q, PRECISION, UPCAST)
        ptr = offs_n[:, None] * sgt + h * sgh + offs_d[None, :]
        tl.store(DK + ptr, _to(dk * scale, DK.dtype.element_ty, UPCAST), mask=col_ok[:, None])
        tl.store(DV + ptr, _to(dv, DV.dtype.element_ty, UPCAST), mask=col_ok[:, None])


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU, SEG,
    sqt, sqh, skt, skh, svt, svh, sdt, sdh, sgt, sgh,
    T, H, NUM_BLOCKS, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    h, m0, m_end, lo, hi = _bounds(tl.program_id(0), CU, SEG, T, H, NUM_BLOCKS, BLOCK_M, PACKED)
    if m0 < m_end:
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < m_end
        q = tl.load(Q + offs_m[:, None] * sqt + h * sqh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * sdt + h * sdh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        lse2 = tl.load(LSE + h * T + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + h * T + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = offs_n < hi
            k = tl.load(K + offs_n[:, None] * skt + h * skh + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            v = tl.load(V + offs_n[:, None] * svt + h * svh + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            s = _mm(q, tl.trans(k), PRECISION, UPCAST) * qk_scale
            p = tl.where(_valid(offs_m, offs_n, row_ok, col_ok, SEG, PACKED), tl.math.exp2(s - lse2[:, None]), 0.0)
            dp = _mm(do, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            dq += _mm(_to(ds, k.dtype, UPCAST), k, PRECISION, UPCAST)
        tl.store(DQ + offs_m[:, None] * sgt + h * sgh + offs_d[None, :], _to(dq * scale, DQ.dtype.element_ty, UPCAST),
                 mask=row_ok[:, None])


INTERPRETED: bool = type(_fwd_kernel).__name__ == "InterpretedFunction"
"""True when the kernels run in the Triton interpreter (TRITON_INTERPRET=1 at import)."""


class TileConfig(NamedTuple):
    """Tile sizes and launch options of one kernel.

    ``block_m``: query rows per tile; ``block_n``: key rows per tile; ``num_stages``: software-pipelining
    depth (None: Triton's default). In the dK/dV kernel the key tile is the program's own and the loop
    runs over query tiles; in the forward and dQ kernels it is the other way round.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int | None = None

    def launch(self) -> dict[str, int]:
        """Launch keywords of this config for a Triton kernel call."""
        return {"num_warps": self.num_warps} | ({} if self.num_stages is None else {"num_stages": self.num_stages})


def _measured(head_dim: int, dtype: torch.dtype) -> bool:
    """16-bit inputs with head dim <= 64: the case ``benchmarks/sweep_varlen_tiles.py`` measured on an H200."""
    return dtype in (torch.bfloat16, torch.float16) and head_dim <= 64


@functools.cache
def fwd_config(head_dim: int, dtype: torch.dtype) -> TileConfig:
    """The forward kernel's tiles for this head dim and dtype (cached: one choice per pair).

    16-bit, head dim <= 64: 64 x 32, 4 warps, 3 stages, the fastest of five in the H200 sweep
    (``benchmarks/sweep_varlen_tiles.py``, RESULTS.md: 0.046 vs 0.066 ms at 196 tokens, a tie at 1568).
    Other cases keep the first, unmeasured heuristics.
    """
    if INTERPRETED:
        return TileConfig(32, 32, 4)
    if _measured(head_dim, dtype):
        return TileConfig(64, 32, 4, 3)
    wide = head_dim > 64 or dtype == torch.float32
    if wide and dtype == torch.float32:
        return TileConfig(64, 32, 4)
    return TileConfig(128, 64 if not wide else 32, 8 if wide else 4)


@functools.cache
def bwd_configs(head_dim: int, dtype: torch.dtype) -> tuple[TileConfig, TileConfig]:
    """``(dK/dV kernel, dQ kernel)`` tiles for this head dim and dtype (cached: one choice per pair).

    16-bit, head dim <= 64: each program's own tile 64 rows, the looped tile 16, 4 warps, 3 stages: the fastest
    of six pairs in the H200 sweep at 196 tokens (0.136 vs 0.255 ms for the first heuristic) and within 2% of
    the fastest at 1568 (0.368 vs 0.362 ms). Other cases: the forward's tiles for both kernels (unmeasured).
    """
    if INTERPRETED:
        return TileConfig(32, 32, 4), TileConfig(32, 32, 4)
    if _measured(head_dim, dtype):
        return TileConfig(16, 64, 4, 3), TileConfig(64, 16, 4, 3)
    c = fwd_config(head_dim, dtype)
    return c, c


def _prep(*ts: torch.Tensor) -> list[torch.Tensor]:
    """Copy only a tensor whose last dim is not contiguous (the kernels take every other stride)."""
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


@functools.lru_cache(maxsize=1024)
def _grid(total: int, heads: int, n_seqs: int, max_seqlen: int, block: int, packed: bool) -> tuple[int, int]:
    """(programs, NUM_BLOCKS) of one tiling, cached per shape."""
    if packed:
        nblk = triton.cdiv(total, block)
        return nblk * heads, nblk
    nblk = max(triton.cdiv(max_seqlen, block), 1)
    return n_seqs * heads * nblk, nblk


@functools.lru_cache(maxsize=64)
def _meta(head_dim: int, dtype: torch.dtype, packed: bool) -> dict:
    """Compile-time arguments shared by the kernels of one call, cached per (head dim, dtype, tiling)."""
    return {"HEAD_DIM": head_dim, "PACKED": packed, "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
            "UPCAST": INTERPRETED and dtype == torch.bfloat16}


def _segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Sequence of each packed row [T] int32 (packed tiling only; no host synchronisation)."""
    seq_lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.arange(seq_lens.numel(), device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(ids, seq_lens, output_size=total)


def _strides(*ts: torch.Tensor) -> tuple[int, ...]:
    """(token stride, head stride) of each tensor, flattened."""
    return tuple(x for t in ts for x in (t.stride(0), t.stride(1)))


def triton_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    mode: str,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward: ``(out [T, H, Dh], lse [H, T] fp32)``; mode "sequence" or "packed"; ``config``: tiles
    (None: :func:`fwd_config`). q, k, v may have any token / head strides (no copy)."""
    q, k, v = _prep(q, k, v)
    T, H, D = q.shape
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((H, T), dtype=torch.float32, device=q.device)
    if T == 0:
        return out, lse
    c = config or fwd_config(D, q.dtype)
    packed = mode == "packed"
    grid, nblk = _grid(T, H, cu_seqlens.numel() - 1, max_seqlen, c.block_m, packed)
    seg = _segment_ids(cu_seqlens, T) if packed else cu_seqlens
    _fwd_kernel[(grid,)](
        q, k, v, out, lse, cu_seqlens, seg, *_strides(q, k, v, out), T, H, nblk, scale * _LOG2E,
        BLOCK_M=c.block_m, BLOCK_N=c.block_n, **_meta(D, q.dtype, packed), **c.launch(),
    )
    return out, lse


def triton_varlen_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    mode: str,
    configs: tuple[TileConfig, TileConfig] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: ``(dq, dk, dv)`` each [T, H, Dh] (contiguous); Delta pre-pass, dK/dV kernel, dQ kernel;
    ``configs``: ``(dK/dV, dQ)`` tiles (None: :func:`bwd_configs`). Inputs may have any token / head strides."""
    q, k, v, grad_out, out = _prep(q, k, v, grad_out, out)
    T, H, D = q.shape
    dq, dk, dv = (torch.empty((T, H, D), dtype=q.dtype, device=q.device) for _ in range(3))
    if T == 0:
        return dq, dk, dv
    ckv, cq = configs or bwd_configs(D, q.dtype)
    packed = mode == "packed"
    delta = torch.empty((H, T), dtype=torch.float32, device=q.device)
    _delta_kernel[(triton.cdiv(T, cq.block_m), H)](
        out, grad_out, delta, *_strides(out, grad_out), T, HEAD_DIM=D, BLOCK_M=cq.block_m
    )
    meta = _meta(D, q.dtype, packed)
    strides = _strides(q, k, v, grad_out, dq)  # dq, dk, dv share one layout
    seg = _segment_ids(cu_seqlens, T) if packed else cu_seqlens
    n_seqs = cu_seqlens.numel() - 1
    grid_n, nblk_n = _grid(T, H, n_seqs, max_seqlen, ckv.block_n, packed)
    _bwd_dkdv_kernel[(grid_n,)](
        q, k, v, grad_out, lse, delta, dk, dv, cu_seqlens, seg, *strides, T, H, nblk_n, scale * _LOG2E, scale,
        BLOCK_M=ckv.block_m, BLOCK_N=ckv.block_n, **meta, **ckv.launch(),
    )
    grid_m, nblk_m = _grid(T, H, n_seqs, max_seqlen, cq.block_m, packed)
    _bwd_dq_kernel[(grid_m,)](
        q, k, v, grad_out, lse, delta, dq, cu_seqlens, seg, *strides, T, H, nblk_m, scale * _LOG2E, scale,
        BLOCK_M=cq.block_m, BLOCK_N=cq.block_n, **meta, **cq.launch(),
    )
    return dq, dk, dv
