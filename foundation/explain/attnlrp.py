"""LRP for the suite's transformers (DeeperBrain, SLIM-Brain's Hiera4D) as gradient x input under detach rules.

zennit has no rules for attention or LayerNorm. AttnLRP (Achtibat et al. 2024, "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers", https://arxiv.org/abs/2402.05602) shows that for these
layers the LRP rules it derives are what gradient x input computes once some factors are held constant in the
backward pass. :func:`lrp_rules` installs those as forward hooks that return the same values with the held
factors detached; the relevance of an input is then ``x * d f / d x`` (:func:`transformer_lrp`):

=====================  ===================================================================================
LayerNorm              the normaliser ``1 / sqrt(var + eps)`` is detached (AttnLRP's identity rule on the
                       division): the layer becomes linear (centring, scaling, affine).
softmax attention      ``attention="cp"`` (default): CP-LRP (Ali et al. 2022, "XAI for Transformers: better
                       explanations through conservative propagation", the simplification AttnLRP compares
                       with): the attention weights are detached, so relevance flows through the values only
                       (``o = P.detach() @ v``), and the rules conserve relevance.
                       ``attention="attnlrp"``: AttnLRP's own rules. The two matrix products ``q k^T`` and
                       ``P v`` take the uniform rule (each factor receives half of the product's relevance:
                       the product's gradient is halved, ``t / 2 + (t / 2).detach()``), and the softmax takes
                       AttnLRP's softmax rule ``R_s = s * (R_P - P * sum_j R_P)`` (row-wise), which is exactly
                       what gradient x input computes through an untouched softmax. Relevance now reaches the
                       input through queries and keys as well; the softmax rule is not conservative (its
                       Taylor bias term absorbs ``sum R_P - sum R_s``, as the paper says).
elementwise act.       identity rule: ``act(x) = x * (act(x) / x).detach()`` (GELU, SiLU, ReLU, tanh, ...).
DeeperBrain            the window's own scale ``1 / std`` is detached (a constant per window), and ``log1p`` of the
                       spectral branch takes the identity rule (``|rFFT|`` is homogeneous of degree 1, so
                       gradient x input is conservative through it).
max pooling (Hiera)    none needed: ``max`` routes the gradient to the arg-max, which is conservative.
=====================  ===================================================================================

Linear layers and convolutions keep their gradient: gradient x input through them is LRP's epsilon rule with
epsilon -> 0. Under these rules the network is, locally, a linear map of its input plus the additive constants
it holds (biases, LayerNorm shifts, positional and channel encodings), so the input relevance sums to the
explained output minus what those constants absorb; with the constants at zero and CP-LRP it sums to the output
exactly (conservation, tested in ``tests/explain/test_attnlrp.py`` on the shipped tiny encoders; with AttnLRP's
softmax rule the softmax bias terms absorb a share too, and the test checks the rules against an explicit
message-passing LRP of one attention layer).

A module with no rule and no known linear behaviour makes :func:`lrp_rules` raise (a KAN, an unknown
activation): its relevance would be silently wrong otherwise.
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.layers.attention import Attention

__all__ = ["ATTENTION_RULES", "attention_probs", "lrp_rules", "transformer_lrp", "unit_attention_probs"]

ELEMENTWISE = (nn.GELU, nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Mish,
               nn.Hardswish)
"""Elementwise activations that take the identity rule."""
LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Identity, nn.Dropout, nn.Flatten, nn.ModuleList,
          nn.Sequential, nn.ModuleDict)
"""Modules whose gradient already is the rule (linear maps) or that only hold others."""
CONSTANT = ("ChannelEncoding", "TemporalEncoding")
"""Modules of additive terms that do not read the explained input (electrode positions, patch times)."""
LINEAR_NAMES = ("PatchEmbedND", "_ConvWeight", "BandSum")
ATTENTION_RULES = ("cp", "attnlrp")
"""``cp``: CP-LRP (attention weights held); ``attnlrp``: AttnLRP's uniform rule on q k^T and P v, softmax rule."""
"""The suite's own linear leaves (Hiera4D's patch embedding, the EEG explanations' sum of band components)."""


def _segments(cu: torch.Tensor, n: int) -> torch.Tensor:
    """Sample id of each of ``n`` packed tokens from ``cu_seqlens [B + 1]``: ``[n]``."""
    return torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), (cu[1:] - cu[:-1]).long(),
                                   output_size=n)


def _half(t: torch.Tensor) -> torch.Tensor:
    """``t`` with half its gradient: AttnLRP's uniform rule for a product of two inputs under gradient x input."""
    return 0.5 * t + (0.5 * t).detach()


def attention_probs(att: Attention, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                    key_padding_mask: torch.Tensor | None = None,
                    uniform: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention weights of the suite's :class:`Attention` and its values, recomputed from ``qkv``.

    Args:
        x: packed tokens ``[K, D]`` (with ``cu_seqlens``; tokens attend within their sample), or ``[B, N, D]``
            (``key_padding_mask [B, N]``, True = real).
        uniform: halve the gradient of ``q k^T`` (AttnLRP's uniform rule; values unchanged).

    Returns:
        ``(P, v)``: packed: ``P [H, K, K]`` (zero across samples), ``v [K, H, Dh]``; dense: ``P [B, H, N, N]``,
        ``v [B, H, N, Dh]``.
    """
    H, Dh = att.num_heads, att.head_dim
    if x.dim() == 2:
        K = x.shape[0]
        q, k, v = att.qkv(x).reshape(K, 3, H, Dh).unbind(1)  # [K, 3D] -> 3 x [K, H, Dh]
        scores = torch.einsum("ihd,jhd->hij", q, k) * att.scale  # [H, K, K]
        scores = _half(scores) if uniform else scores
        seg = _segments(cu_seqlens, K) if cu_seqlens is not None else torch.zeros(K, dtype=torch.long)
        scores = scores.masked_fill((seg[:, None] != seg[None, :])[None], float("-inf"))
        return scores.softmax(-1), v
    B, N, _ = x.shape
    q, k, v = att.qkv(x).reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, Dh]
    scores = q @ k.transpose(-1, -2) * att.scale  # [B, H, N, N]
    scores = _half(scores) if uniform else scores
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1), v


def unit_attention_probs(att: nn.Module, x: torch.Tensor, units_cu: torch.Tensor,
                         uniform: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Attention weights of Hiera4D's ``MaskUnitAttention`` (q pooling included) and its values.

    Args:
        x: ``[U, T, D]`` tokens of the units of all samples (sample-major); units_cu ``[B + 1]``.
        uniform: halve the gradient of ``q k^T`` (AttnLRP's uniform rule; values unchanged).

    Returns:
        ``(P, v)`` with ``v [U, T, H, Dh]`` and P per sample: with mask-unit attention one ``[U_b, H, T/s, T]``
        (queries of a unit read its own keys), else one ``[H, U_b * T/s, U_b * T]`` (every token of the sample).
    """
    U, T, _ = x.shape
    H, Dh, s = att.heads, att.head_dim, att.q_stride
    q, k, v = att.qkv(x).reshape(U, T, 3, H, Dh).unbind(2)  # 3 x [U, T, H, Dh]
    if s > 1:
        q = q.view(U, s, T // s, H, Dh).amax(dim=1)  # [U, T/s, H, Dh]
    scale = Dh ** -0.5
    out = []
    for a, b in zip(units_cu[:-1].tolist(), units_cu[1:].tolist()):
        if att.use_mask_unit_attn:
            scores = torch.einsum("uqhd,ukhd->uhqk", q[a:b], k[a:b]) * scale
        else:
            qs, ks = q[a:b].reshape(-1, H, Dh), k[a:b].reshape(-1, H, Dh)
            scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        out.append((_half(scores) if uniform else scores).softmax(-1))
    return out, v


def _weights(P: torch.Tensor, attnlrp: bool) -> torch.Tensor:
    """CP-LRP holds the attention weights; AttnLRP lets relevance into them (softmax rule upstream)."""
    return P if attnlrp else P.detach()


def _attention_rule(attnlrp: bool):
    def hook(m: Attention, args: tuple, kwargs: dict, _out: torch.Tensor) -> torch.Tensor:
        """The attention output recomputed under the rule: ``proj(P.detach() @ v)`` (CP-LRP) or
        ``proj(half(P @ v))`` with ``P = softmax(half(q k^T) * scale)`` (AttnLRP)."""
        x = args[0]
        cu = args[1] if len(args) > 1 else kwargs.get("cu_seqlens")
        kpm = args[3] if len(args) > 3 else kwargs.get("key_padding_mask")
        P, v = attention_probs(m, x, cu, kpm, uniform=attnlrp)
        P = _weights(P, attnlrp).to(v.dtype)
        if x.dim() == 2:
            o = torch.einsum("hij,jhd->ihd", P, v)  # [K, H, Dh]
        else:
            o = (P @ v).transpose(1, 2)  # [B, H, N, Dh] -> [B, N, H, Dh]
        o = (_half(o) if attnlrp else o).reshape(x.shape)  # -> [K, D] or [B, N, D]
        if x.dim() == 3 and kpm is not None:
            o = o * kpm[..., None]
        return m.proj(o)
    return hook


def _unit_attention_rule(attnlrp: bool):
    def hook(m: nn.Module, args: tuple, kwargs: dict, _out: torch.Tensor) -> torch.Tensor:
        """Hiera4D's MaskUnitAttention output under the rule (see :func:`_attention_rule`)."""
        x = args[0]
        units_cu = args[1] if len(args) > 1 else kwargs["units_cu"]
        probs, v = unit_attention_probs(m, x, units_cu, uniform=attnlrp)
        U, T = x.shape[:2]
        Tq = T // m.q_stride
        outs = []
        for P, (a, b) in zip(probs, zip(units_cu[:-1].tolist(), units_cu[1:].tolist())):
            P = _weights(P, attnlrp)
            if m.use_mask_unit_attn:
                outs.append(torch.einsum("uhqk,ukhd->uqhd", P, v[a:b]))  # [U_b, Tq, H, Dh]
            else:
                vs = v[a:b].reshape(-1, m.heads, m.head_dim)
                outs.append(torch.einsum("hqk,khd->qhd", P, vs).reshape(b - a, Tq, m.heads, m.head_dim))
        o = torch.cat(outs)
        return m.proj((_half(o) if attnlrp else o).reshape(U, Tq, m.dim_out))
    return hook


def _ln_detached(m: nn.LayerNorm, args: tuple, _out: torch.Tensor) -> torch.Tensor:
    """LayerNorm with its normaliser detached: ``(x - mean) * rstd.detach() * w + b``."""
    x = args[0]
    dims = tuple(range(-len(m.normalized_shape), 0))
    xc = x - x.mean(dims, keepdim=True)
    rstd = torch.rsqrt(xc.pow(2).mean(dims, keepdim=True) + m.eps)
    y = xc * rstd.detach()
    if m.weight is not None:
        y = y * m.weight
    if m.bias is not None:
        y = y + m.bias
    return y


def _identity_rule(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    """``x * (act(x) / x).detach()``: same value, relevance passed through unchanged."""
    x = args[0]
    safe = torch.where(x == 0, torch.ones_like(x), x)
    ratio = torch.where(x == 0, torch.zeros_like(out), out / safe)
    return x * ratio.detach()


def _log1p_identity(_m: nn.Module, args: tuple) -> tuple:
    """Pre-hook of DeeperBrain's spectral projection: ``log1p(a)`` as ``a * (log1p(a) / a).detach()``."""
    la = args[0]
    a = torch.expm1(la)
    ratio = torch.where(a > 0, la / a.clamp(min=1e-30), torch.ones_like(a))
    return (a * ratio.detach(), *args[1:])


def _no_rule(name: str, kind: str):
    def refuse(_m: nn.Module, _args: tuple) -> None:
        raise ConfigError(f"lrp: no AttnLRP rule for module {name!r} ({kind}); the transformer rules cover LayerNorm, "
                          "the suite's attention, elementwise activations and linear layers. Use --method ig for "
                          "this model")
    return refuse


def _detached_scale(orig):
    """DeeperBrain's ``scale_input`` with the per-window scale held constant (one scalar per window)."""
    def scale_input(self, x: torch.Tensor, chan_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = orig(x.detach(), chan_mask)
        xd = x.detach().float()
        r = (y.float() * xd).sum((1, 2), keepdim=True) / (xd * xd).sum((1, 2), keepdim=True).clamp(min=1e-30)
        return (x.float() * r).to(x.dtype)  # [B, C, T] * [B, 1, 1]
    return scale_input


@contextmanager
def lrp_rules(net: nn.Module, attention: str = "cp") -> Iterator[nn.Module]:
    """Within the block, ``net``'s backward pass carries AttnLRP relevance (gradient x input = relevance).

    Forward values are unchanged (up to rounding). Hooks and the instance-level override of DeeperBrain's
    ``scale_input`` are removed on exit.

    Args:
        attention: the softmax attention rule, one of :data:`ATTENTION_RULES` (module docstring).

    Raises:
        ConfigError: an unknown ``attention`` rule; (in the forward pass) a module with no rule, named, whose
            relevance would be wrong.
    """
    from foundation.modalities.fmri.hiera4d import MaskUnitAttention

    if attention not in ATTENTION_RULES:
        raise ConfigError(f"lrp: unknown attention rule {attention!r}; valid: {', '.join(ATTENTION_RULES)}")
    attnlrp = attention == "attnlrp"
    handles, patched = [], []
    try:
        for name, m in net.named_modules():
            kind = type(m).__name__
            if isinstance(m, Attention):
                handles.append(m.register_forward_hook(_attention_rule(attnlrp), with_kwargs=True))
            elif isinstance(m, MaskUnitAttention):
                handles.append(m.register_forward_hook(_unit_attention_rule(attnlrp), with_kwargs=True))
            elif isinstance(m, nn.LayerNorm):
                handles.append(m.register_forward_hook(_ln_detached))
            elif isinstance(m, ELEMENTWISE):
                handles.append(m.register_forward_hook(_identity_rule))
            elif not (isinstance(m, LINEAR) or kind in CONSTANT or kind in LINEAR_NAMES or list(m.children())):
                handles.append(m.register_forward_pre_hook(_no_rule(name, kind)))  # only modules the pass runs
            if kind == "DeeperBrain":
                if getattr(m, "spectral_embed", None) is not None:
                    handles.append(m.spectral_embed.register_forward_pre_hook(_log1p_identity))
                m.scale_input = types.MethodType(_detached_scale(type(m).scale_input.__get__(m)), m)
                patched.append(m)
        yield net
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.scale_input


def transformer_lrp(net: nn.Module, x: torch.Tensor, target: torch.Tensor, attention: str = "cp") -> torch.Tensor:
    """AttnLRP relevance of ``net``'s target output on its input: ``x [B, ...]`` -> ``[B, ...]``.

    Args:
        net: ``x -> [B, K]`` (an :class:`~foundation.explain.target.InputModel`).
        target: output index per sample ``[B]``.
        attention: the attention rule, ``cp`` (CP-LRP) or ``attnlrp`` (:data:`ATTENTION_RULES`).

    Returns:
        ``x * d f_target / d x`` under :func:`lrp_rules` (sums to ``f_target`` minus what the model's additive
        constants absorb).
    """
    x = x.detach().clone().requires_grad_(True)
    with lrp_rules(net, attention):
        out = net(x)
        out.gather(1, target[:, None].long()).sum().backward()
    return (x * x.grad).detach()

