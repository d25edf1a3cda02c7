"""Variable-length (packed) attention over visible tokens: public API, checks, dispatch.

``varlen_attention(q, k, v, cu_seqlens, max_seqlen)`` computes non-causal softmax
attention inside each of the packed sequences, as ``flash_attn_varlen_func`` of
FlashAttention-2 (Dao 2023, https://arxiv.org/abs/2307.08691) does. Two
implementations give the same numbers (fp32 accumulation in both):

* ``"triton"``: the fused kernels of :mod:`foundation.kernels.triton_varlen`;
  CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before triton
  was imported (the interpreter, used by the tests);
* ``"reference"``: segment-by-segment torch in :mod:`foundation.kernels.reference`.

A third, ``"sdpa"``, pads the packed tokens and runs ``scaled_dot_product_attention``
with a key-padding mask (:mod:`foundation.kernels.padded`): the padded baseline,
so that a model can be timed with and without the kernels by one config value.

``backend="auto"`` takes Triton when ``q.is_cuda`` and triton imports, else the
reference. The choice is an argument of every call, never process-wide state.

Two call paths give the same numbers (both call :func:`_forward` / :func:`_backward`):

* eager: :class:`VarlenAttentionFunction`, a plain ``torch.autograd.Function``
  (the least host work per call: no custom-op dispatch, no schema checks);
* under ``torch.compile``: the torch.library custom ops ``foundation::varlen_attn_fwd``
  and ``foundation::varlen_attn_bwd`` (with ``register_autograd`` and ``register_fake``),
  so that ``torch.compile(fullgraph=True)`` traces through a call as one opaque node.

Neither synchronises with the device: the values of ``cu_seqlens`` are checked only
with ``validate=True`` (a host copy), and ``max_seqlen`` comes from the caller (from
:func:`foundation.kernels.pack_visible`, which knows the lengths on the host).
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from foundation.errors import ConfigError, did_you_mean
from foundation.kernels.padded import padded_sdpa
from foundation.kernels.reference import reference_layout, reference_varlen_bwd, reference_varlen_fwd

__all__ = ["varlen_attention", "VarlenAttentionFunction", "BACKENDS", "MODES", "PACK_MAX_SEQLEN", "resolve_backend"]

BACKENDS = ("auto", "triton", "reference", "sdpa")
MODES = ("auto", "sequence", "packed")
PACK_MAX_SEQLEN = 64
"""``mode="auto"`` tiles the packed buffer (packing mode) when max_seqlen is at most this (unverified tuning)."""

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TRITON_HEAD_DIMS = (16, 32, 64, 128)


@functools.lru_cache(maxsize=1)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=1)
def _triton_interpreted() -> bool:
    from foundation.kernels.triton_varlen import INTERPRETED  # raises ImportError naming triton

    return INTERPRETED


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """Turn ``"auto"`` into ``"triton"`` or ``"reference"`` for tensors like ``q``; check the name.

    Raises:
        ConfigError: unknown backend name.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"varlen_attention: unknown backend {backend!r}; {did_you_mean(str(backend), BACKENDS)}")
    if backend == "auto":
        return "triton" if q.is_cuda and _triton_importable() else "reference"
    return backend


def _check_static(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    backend: str,
    mode: str,
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ConfigError(
                f"varlen_attention: {name} must be packed [T, H, Dh], received shape {list(t.shape)}; "
                "use foundation.kernels.pack_visible to pack a padded batch"
            )
        allowed = _DTYPES if backend == "triton" else _DTYPES + (torch.float64,)
        if t.dtype not in allowed:
            raise ConfigError(
                f"varlen_attention: {name} has dtype {t.dtype}; expected one of float32, bfloat16, float16"
                + ("" if backend == "triton" else " (float64 on the reference backend)")
            )
    if k.shape != q.shape or v.shape != q.shape:
        raise ConfigError(
            f"varlen_attention: q, k and v must have the same shape [T, H, Dh], received q {list(q.shape)}, "
            f"k {list(k.shape)}, v {list(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ConfigError(
            f"varlen_attention: q, k and v must share one dtype, received q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if k.device != q.device or v.device != q.device or cu_seqlens.device != q.device:
        raise ConfigError(
            f"varlen_attention: q ({q.device}), k ({k.device}), v ({v.device}) and cu_seqlens "
            f"({cu_seqlens.device}) must be on one device"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32 or cu_seqlens.shape[0] < 2:
        raise ConfigError(
            f"varlen_attention: cu_seqlens must be a 1-D int32 tensor [S + 1] with S >= 1, received shape "
            f"{list(cu_seqlens.shape)} dtype {cu_seqlens.dtype}; build it with foundation.kernels.pack_visible "
            "or call .int()"
        )
    if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
        raise ConfigError(f"varlen_attention: max_seqlen must be a non-negative int, received {max_seqlen!r}")
    if mode not in MODES:
        raise ConfigError(f"varlen_attention: unknown mode {mode!r}; {did_you_mean(str(mode), MODES)}")
    if backend == "triton" and q.shape[2] not in _TRITON_HEAD_DIMS:
        raise ConfigError(
            f"varlen_attention: the triton backend supports head dims {list(_TRITON_HEAD_DIMS)}, received "
            f"Dh = {q.shape[2]}; use backend='reference' or change dim / num_heads"
        )


def _check_values(cu_seqlens: torch.Tensor, max_seqlen: int, total: int) -> None:
    """Data-dependent checks, run inside the op where tensors are real (also under torch.compile)."""
    cu = cu_seqlens.tolist()
    if cu[0] != 0:
        raise ConfigError(f"varlen_attention: cu_seqlens must start at 0, received cu_seqlens[0] = {cu[0]}")
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    bad = [i for i, n in enumerate(lengths) if n < 0]
    if bad:
        i = bad[0]
        raise ConfigError(
            f"varlen_attention: cu_seqlens must not decrease, received cu_seqlens[{i}] = {cu[i]} > "
            f"cu_seqlens[{i + 1}] = {cu[i + 1]}"
        )
    if cu[-1] != total:
        raise ConfigError(
            f"varlen_attention: cu_seqlens[-1] = {cu[-1]} does not match the token count T = {total} of q/k/v"
        )
    longest = max(lengths)
    if max_seqlen < longest:
        raise ConfigError(
            f"varlen_attention: max_seqlen = {max_seqlen} is shorter than the longest sequence ({longest}) "
            "in cu_seqlens"
        )


def _resolve_mode(mode: str, max_seqlen: int) -> str:
    if mode == "auto":
        return "packed" if max_seqlen <= PACK_MAX_SEQLEN else "sequence"
    return mode


def _forward(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode, layout=None):
    """(out, lse) of one backend; the one forward of both call paths (``layout``: the reference's padded
    layout, :func:`~foundation.kernels.reference.reference_layout`, when the caller keeps it for the backward)."""
    if backend == "triton":
        from foundation.kernels.triton_varlen import triton_varlen_fwd

        return triton_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale, _resolve_mode(mode, max_seqlen))
    return reference_varlen_fwd(q, k, v, cu_seqlens, scale, max_seqlen=max_seqlen, layout=layout)


def _backward(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, backend, mode, layout=None):
    """(dq, dk, dv) of one backend; the one backward of both call paths."""
    if backend == "triton":
        from foundation.kernels.triton_varlen import triton_varlen_bwd

        return triton_varlen_bwd(
            grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, _resolve_mode(mode, max_seqlen)
        )
    return reference_varlen_bwd(grad_out, q, k, v, out, lse, cu_seqlens, scale, max_seqlen=max_seqlen, layout=layout)


class VarlenAttentionFunction(torch.autograd.Function):
    """The eager path: ``apply(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode) -> out [T, H, Dh]``.

    ``backend`` must be resolved ("triton" or "reference") and the inputs checked (see
    :func:`varlen_attention`, the public entry).
    """

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, scale, backend, mode):
        # the reference's padded layout is built once and kept for the backward (issue 16)
        layout = reference_layout(cu_seqlens, q, max_seqlen) if backend == "reference" and q.shape[0] else None
        out, lse = _forward(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode, layout)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.args = (max_seqlen, scale, backend, mode, layout)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None, None


@torch.library.custom_op("foundation::varlen_attn_fwd", mutates_args=())
def _varlen_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    backend: str,
    mode: str,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if validate:
        _check_values(cu_seqlens, max_seqlen, q.shape[0])
    return _forward(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode)


@_varlen_fwd_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode, validate):
    T, H, _ = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.empty_like(q), q.new_empty((H, T), dtype=acc)


@torch.library.custom_op("foundation::varlen_attn_bwd", mutates_args=())
def _varlen_bwd_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    backend: str,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, backend, mode)


@_varlen_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, backend, mode):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_seqlen, scale, backend, mode, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale, ctx.backend, ctx.mode = max_seqlen, scale, backend, mode


def _op_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _varlen_bwd_op(
        grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale, ctx.backend, ctx.mode
    )
    return dq, dk, dv, None, None, None, None, None, None


_varlen_fwd_op.register_autograd(_op_backward, setup_context=_setup_context)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    backend: str = "auto",
    mode: str = "auto",
    validate: bool = False,
) -> torch.Tensor:
    """Non-causal softmax attention inside each packed sequence.

    Args:
        q: queries [T, H, Dh], T = total tokens of all sequences (any strides with a
            contiguous last dim, e.g. ``qkv.unbind``: no copy is made).
        k: keys [T, H, Dh].
        v: values [T, H, Dh].
        cu_seqlens: sequence starts [S + 1], int32, 0 first, non-decreasing, last = T.
        max_seqlen: length of the longest sequence (an upper bound is accepted), a
            host int: :func:`foundation.kernels.pack_visible` returns it.
        scale: factor on q.k; default Dh ** -0.5.
        backend: "auto" (Triton for CUDA tensors when triton imports, else the
            reference), "triton", "reference" or "sdpa" (padded
            ``scaled_dot_product_attention`` with a key-padding mask: the baseline).
        mode: Triton tiling: "sequence" (one program per query block of a
            sequence), "packed" (tiles of the packed buffer masked by segment id,
            for short sequences) or "auto" (packed when max_seqlen <= PACK_MAX_SEQLEN).
            The other backends ignore it.
        validate: also check the values of cu_seqlens (start 0, non-decreasing,
            last = T, max_seqlen large enough). This copies cu_seqlens to the host,
            one synchronisation per call on CUDA, so it is off unless asked for; a
            layout from :func:`foundation.kernels.pack_visible` is right by
            construction. Shapes, dtypes and devices are always checked (no copy).

    Returns:
        The attention output [T, H, Dh] in the dtype of q.

    Raises:
        ConfigError: mismatched shapes, dtypes or devices, cu_seqlens not 1-D int32,
            unknown backend or mode, head dim unsupported by Triton, Triton asked for
            CPU tensors without the interpreter; with ``validate=True`` also
            cu_seqlens not starting at 0, decreasing or last != T, max_seqlen too small.
        ImportError: backend="triton" and triton is not installed.
    """
    backend = resolve_backend(backend, q)
    _check_static(q, k, v, cu_seqlens, max_seqlen, backend, mode)
    if backend == "triton" and not q.is_cuda and not _triton_interpreted():
        raise ConfigError(
            f"varlen_attention: backend='triton' needs CUDA tensors (received {q.device}) or "
            "TRITON_INTERPRET=1 set before triton is first imported; use backend='reference' on CPU"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "sdpa":
        if validate:
            _check_values(cu_seqlens, max_seqlen, q.shape[0])
        return padded_sdpa(q, k, v, cu_seqlens, max_seqlen, scale)
    if torch.compiler.is_compiling():
        out, _ = _varlen_fwd_op(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode, validate)
        return out
    if validate:
        _check_values(cu_seqlens, max_seqlen, q.shape[0])
    return VarlenAttentionFunction.apply(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode)


def varlen_attention_grads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    grad_out: torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
    mode: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`varlen_attention` w.r.t. q, k, v at ``grad_out``, recomputing the forward.

    For backwards that keep only a compressed q, k, v (:func:`foundation.kernels.attention_core_8bit`): the
    forward (output and log-sum-exp) is recomputed by the backend's own kernel, then its backward runs, through
    the ``foundation::varlen_attn_*`` custom ops, so ``torch.compile`` traces it without a graph break and no
    ``torch.autograd.grad`` call is made. The "sdpa" baseline has no kernel pair of its own; the reference
    backend computes the same function for it.

    Args:
        q, k, v, cu_seqlens, max_seqlen, scale, backend, mode: as in :func:`varlen_attention`.
        grad_out: the output's gradient [T, H, Dh].

    Returns:
        dq, dk, dv, each [T, H, Dh] in the dtype of q.
    """
    backend = resolve_backend(backend, q)
    if backend == "sdpa":
        backend = "reference"
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = _varlen_fwd_op(q, k, v, cu_seqlens, max_seqlen, scale, backend, mode, False)
    return _varlen_bwd_op(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, backend, mode)
