"""8-bit activation storage for training (Mesa).

Mesa (Pan et al. 2021, "Mesa: A Memory-saving Training Framework for
Transformers", https://arxiv.org/abs/2111.11124): the forward pass is computed
in full precision, but the activations that autograd keeps for the backward pass
are stored as 8-bit integers and dequantised when the gradient is computed.

Covered here (each an ``autograd.Function`` plus a drop-in module subclass):

* ``nn.Linear``: keeps int8 x (needed for dW = g^T x); dX = g W needs no activation.
* ``nn.GELU`` / ``nn.SiLU``: keeps int8 x; the derivative is evaluated at the
  dequantised x.
* ``nn.LayerNorm``: keeps int8 x plus the fp32 row mean and 1/std (one number per
  row), and rebuilds x_hat = (x - mean) / std from the dequantised x.
* ``nn.Softmax``: keeps uint8 p (softmax outputs lie in [0, 1]) with one scale per
  attention head for [B, H, N, N] inputs (the current batch's per-head maximum),
  one per tensor otherwise.

Scales outside softmax are symmetric per-tensor running estimates of max|x|
(exponential moving average, momentum 0.9 (unverified), initialised from the
first training batch, as in Mesa's running-estimate quantiser); values beyond
the running range saturate at +-127. Scales live in non-persistent buffers, so
state dicts are unchanged. In eval mode, or when no gradient is needed, the
modules compute exactly their base class's forward.

``apply_act_bits(model, 8)`` turns every supported submodule of any model into
its 8-bit form in place (by class swap: parameters, hooks and optimiser
references are untouched); ``apply_act_bits(model, None)`` turns them back.
The fused attention core (:func:`foundation.kernels.varlen_attention` /
``scaled_dot_product_attention``) stores no softmax matrix but keeps q, k, v, the
output and a per-row log-sum-exp; :func:`attention_core_8bit` replaces all of
that by int8 q, k, v (per-head scales) and recomputes the core in backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError
from foundation.kernels.varlen import varlen_attention, varlen_attention_grads

__all__ = [
    "apply_act_bits",
    "Linear8",
    "GELU8",
    "SiLU8",
    "LayerNorm8",
    "Softmax8",
    "softmax_8bit",
    "attention_core_8bit",
    "MOMENTUM",
]

MOMENTUM = 0.9
"""EMA momentum of the running max|x| estimate (unverified)."""


def _absmax(x: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """max|x| (over dims, kept): max(amax, -amin), two vectorised passes and no |x| temporary."""
    if dims is None:
        return torch.maximum(x.amax(), -x.amin())
    return torch.maximum(x.amax(dim=dims, keepdim=True), -x.amin(dim=dims, keepdim=True))


def _quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric int8: round(x / scale * 127) clamped to [-127, 127]."""
    return (x.float() * (127.0 / scale)).round_().clamp_(-127, 127).to(torch.int8)


def _dequantize(qx: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return qx.to(dtype).mul_((scale / 127.0).to(dtype))


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale):
        ctx.save_for_backward(_quantize(x, scale), scale, weight)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        qx, scale, weight = ctx.saved_tensors
        gx = g @ weight.to(g.dtype) if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1]:
            x = _dequantize(qx, scale, ctx.x_dtype)
            gw = g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # [*, out]^T [*, in] -> [out, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.reshape(-1, g.shape[-1]).sum(0)
        return gx, gw, gb, None


class _ActFn(torch.autograd.Function):
    """GELU (approximate "none" / "tanh") or SiLU; the derivative comes from ATen's fused backward ops."""

    @staticmethod
    def forward(ctx, x, scale, kind):
        ctx.save_for_backward(_quantize(x, scale), scale)
        ctx.kind, ctx.x_dtype = kind, x.dtype
        return F.silu(x) if kind == "silu" else F.gelu(x, approximate=kind)

    @staticmethod
    def backward(ctx, g):
        qx, scale = ctx.saved_tensors
        x = _dequantize(qx, scale, ctx.x_dtype)
        if ctx.kind == "silu":
            return torch.ops.aten.silu_backward(g, x), None, None
        return torch.ops.aten.gelu_backward(g, x, approximate=ctx.kind), None, None


class _LayerNormFn(torch.autograd.Function):
    """LayerNorm through ATen's fused ``native_layer_norm`` and its backward, fed the dequantised input."""

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps, scale):
        y, mean, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.save_for_backward(_quantize(x, scale), scale, mean, rstd, weight, bias)
        ctx.normalized_shape, ctx.x_dtype = normalized_shape, x.dtype
        return y

    @staticmethod
    def backward(ctx, g):
        qx, scale, mean, rstd, weight, bias = ctx.saved_tensors
        x = _dequantize(qx, scale, ctx.x_dtype)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.native_layer_norm_backward(
            g.contiguous(), x, ctx.normalized_shape, mean, rstd, weight, bias, mask
        )
        return gx, gw, gb, None, None, None


class _SoftmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        p = torch.softmax(x, dim)
        pf = p.float()
        if p.dim() == 4:  # [B, H, N, N]: one scale per head
            scale = pf.amax(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)
        else:
            scale = pf.amax().clamp_min(1e-12)
        qp = torch.round(pf * (255.0 / scale)).to(torch.uint8)
        ctx.save_for_backward(qp, scale)
        ctx.dim, ctx.p_dtype = dim, p.dtype
        return p

    @staticmethod
    def backward(ctx, g):
        qp, scale = ctx.saved_tensors
        p = qp.float() * (scale / 255.0)
        gf = g.float()
        gx = p * (gf - (gf * p).sum(ctx.dim, keepdim=True))
        return gx.to(ctx.p_dtype), None


def _dense_core_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``softmax(scale * q k^T) v`` w.r.t. q, k, v, written out (no autograd call).

    Args:
        q, k, v: [B, H, N, Dh] (v may have its own last size); g: the output's gradient [B, H, N, Dv].

    Returns:
        dq, dk, dv in the shapes of q, k, v. The attention matrix [B, H, N, N] is rebuilt once in float32 (float64
        stays float64), as SDPA's math backend does.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qa, ka, va, ga = (t.to(acc) for t in (q, k, v, g))
    p = torch.softmax(torch.matmul(qa, ka.transpose(-2, -1)) * scale, dim=-1)  # [B, H, N, N]
    dv = torch.matmul(p.transpose(-2, -1), ga)  # [B, H, N, Dv]
    dp = torch.matmul(ga, va.transpose(-2, -1))  # [B, H, N, N]
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * scale
    dq = torch.matmul(ds, ka)
    dk = torch.matmul(ds.transpose(-2, -1), qa)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _CoreFn(torch.autograd.Function):
    """Attention core recomputed in backward from int8 q, k, v (one scale per head, axis 1).

    The backward is plain tensor code and the varlen custom ops (no ``torch.autograd.grad``), so ``torch.compile``
    traces the forward and the backward without a graph break.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, cu_seqlens, max_seqlen, backend):
        saved = []
        for t in (q, k, v):
            dims = tuple(d for d in range(t.dim()) if d != 1)
            scale_t = _absmax(t.detach(), dims).float().clamp_min(1e-12)
            saved += [_quantize(t, scale_t), scale_t]
        ctx.packed = cu_seqlens is not None
        if ctx.packed:
            saved.append(cu_seqlens)
            out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=scale, backend=backend)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        ctx.save_for_backward(*saved)
        ctx.dtype, ctx.scale, ctx.max_seqlen, ctx.backend = q.dtype, scale, max_seqlen, backend
        return out

    @staticmethod
    def backward(ctx, g):
        qq, sq, qk, sk, qv, sv, *cu = ctx.saved_tensors
        q, k, v = (_dequantize(t, s, ctx.dtype) for t, s in ((qq, sq), (qk, sk), (qv, sv)))
        if ctx.packed:
            dq, dk, dv = varlen_attention_grads(q, k, v, cu[0], ctx.max_seqlen, g, scale=ctx.scale,
                                                backend=ctx.backend)
        else:
            dq, dk, dv = _dense_core_backward(q, k, v, g, ctx.scale)
        return dq, dk, dv, None, None, None, None


def attention_core_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0,
                        backend: str = "auto") -> torch.Tensor:
    """Softmax attention keeping only int8 q, k, v (per-head scales) for backward.

    The backward dequantises q, k, v and recomputes the attention (one extra attention forward), so nothing of the
    core's own saved state (output, log-sum-exp) outlives the forward.

    Args:
        q, k, v: [B, H, N, Dh] dense (``F.scaled_dot_product_attention``), or packed [K, H, Dh] with
            ``cu_seqlens`` (``varlen_attention``); the head axis is 1.
        scale: factor on q.k; default Dh ** -0.5.
        cu_seqlens, max_seqlen, backend: for packed tokens, as in :func:`foundation.kernels.varlen_attention`.

    Returns:
        The attention output, computed in full precision: [B, H, N, Dh] dense or [K, H, Dh] packed.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _CoreFn.apply(q, k, v, scale, cu_seqlens, max_seqlen, backend)


def softmax_8bit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax whose saved output is uint8 (per-head scales for [B, H, N, N] attention scores).

    Args:
        x: scores, e.g. [B, H, N, N].
        dim: softmax axis.

    Returns:
        softmax(x, dim), same shape and dtype.
    """
    return _SoftmaxFn.apply(x, dim)


class _RunningScale:
    """Mixin: a non-persistent ``act_scale`` buffer holding the running max|x| estimate."""

    def _init_act_bits(self) -> None:
        param = next(self.parameters(recurse=False), None)
        device = param.device if param is not None else None
        self.register_buffer("act_scale", torch.zeros((), dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("act_scale_seen", torch.zeros((), dtype=torch.bool, device=device), persistent=False)

    def _undo_act_bits(self) -> None:
        del self._buffers["act_scale"], self._buffers["act_scale_seen"]

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale.device != x.device:  # parameter-free modules learn their device here
            self.act_scale = self.act_scale.to(x.device)
            self.act_scale_seen = self.act_scale_seen.to(x.device)
        with torch.no_grad():
            cur = _absmax(x.detach()).float().clamp_min(1e-12)
            blended = MOMENTUM * self.act_scale + (1 - MOMENTUM) * cur
            self.act_scale.copy_(torch.where(self.act_scale_seen, blended, cur))
            self.act_scale_seen.fill_(True)
            return self.act_scale.clone()

    def _store_8bit(self, *tensors: torch.Tensor | None) -> bool:
        return self.training and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class Linear8(_RunningScale, nn.Linear):
    """``nn.Linear`` that keeps its input as int8 for the backward pass. Input [*, in] -> [*, out]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._store_8bit(x, self.weight, self.bias):
            return F.linear(x, self.weight, self.bias)
        return _LinearFn.apply(x, self.weight, self.bias, self._scale(x))


class GELU8(_RunningScale, nn.GELU):
    """``nn.GELU`` (same ``approximate``) that keeps its input as int8. Shape preserved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._store_8bit(x):
            return F.gelu(x, approximate=self.approximate)
        return _ActFn.apply(x, self._scale(x), self.approximate)


class SiLU8(_RunningScale, nn.SiLU):
    """``nn.SiLU`` that keeps its input as int8. Shape preserved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._store_8bit(x):
            return F.silu(x)
        return _ActFn.apply(x, self._scale(x), "silu")


class LayerNorm8(_RunningScale, nn.LayerNorm):
    """``nn.LayerNorm`` that keeps int8 x plus fp32 row mean and 1/std. Shape preserved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._store_8bit(x, self.weight, self.bias):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return _LayerNormFn.apply(x, self.weight, self.bias, list(self.normalized_shape), self.eps, self._scale(x))


class Softmax8(nn.Softmax):
    """``nn.Softmax`` that keeps uint8 outputs (per-head scales on [B, H, N, N]). Shape preserved."""

    def _init_act_bits(self) -> None:
        pass

    def _undo_act_bits(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return torch.softmax(x, self.dim)
        return softmax_8bit(x, self.dim)


_SWAPS: dict[type, type] = {
    nn.Linear: Linear8,
    nn.GELU: GELU8,
    nn.SiLU: SiLU8,
    nn.LayerNorm: LayerNorm8,
    nn.Softmax: Softmax8,
}
_UNSWAPS: dict[type, type] = {v: k for k, v in _SWAPS.items()}


def apply_act_bits(model: nn.Module, bits: int | None) -> list[str]:
    """Switch 8-bit activation storage on (bits=8) or off (None or 0) for every supported submodule.

    Supported: modules whose type is exactly nn.Linear, nn.GELU, nn.SiLU, nn.LayerNorm
    or nn.Softmax (subclasses are left alone, since their forward may differ), plus
    any module that declares an ``act_bits`` attribute (it is set to ``bits``; e.g.
    :class:`foundation.layers.attention.Attention` then keeps int8 q, k, v). The
    swap changes the module's class in place, so parameters, state-dict keys,
    hooks and optimiser references stay the same. Everything is checked before
    any module changes.

    Args:
        model: any module (the model itself may be a supported layer).
        bits: 8 to store activations as 8-bit, None or 0 to restore full precision.

    Returns:
        The qualified names of the modules that changed ("" for the model itself).

    Raises:
        ConfigError: bits is not None, 0 or 8; model is not an nn.Module; an
            nn.Softmax has dim=None (the implicit legacy axis).
    """
    if bits not in (None, 0, 8) or isinstance(bits, bool):
        raise ConfigError(
            f"act_bits (recipe key memory.act_bits): expected None, 0 or 8, received {bits!r}; "
            "use 8 or leave it unset"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"apply_act_bits: expected an nn.Module, received {type(model).__name__}")
    table = _SWAPS if bits == 8 else _UNSWAPS
    targets = [(name, m) for name, m in model.named_modules() if type(m) in table]
    declared = [(name, m) for name, m in model.named_modules() if hasattr(m, "act_bits") and m.act_bits != bits]
    for name, m in targets:
        if isinstance(m, nn.Softmax) and m.dim is None:
            raise ConfigError(
                f"apply_act_bits: softmax module {name or '<model>'} has dim=None; give it an explicit dim "
                "(e.g. nn.Softmax(dim=-1)) before enabling 8-bit storage"
            )
    for _, m in declared:
        m.act_bits = bits
    for _, m in targets:
        if bits == 8:
            m.__class__ = table[type(m)]
            m._init_act_bits()
        else:
            m._undo_act_bits()
            m.__class__ = table[type(m)]
    return sorted({name for name, _ in targets + declared})
