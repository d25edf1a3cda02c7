"""Fused masked-patch attention (Triton + torch reference) and 8-bit activation storage.

triton is imported lazily: only asking for ``backend="triton"`` imports it.
"""
from foundation.kernels.mesa import (
    GELU8,
    LayerNorm8,
    Linear8,
    SiLU8,
    Softmax8,
    apply_act_bits,
    attention_core_8bit,
    softmax_8bit,
)
from foundation.kernels.packing import (
    PackPlan,
    pack_visible,
    packed_mean,
    plan_pack,
    sample_ids,
    seqlens_to_cu,
    unpack,
)
from foundation.kernels.varlen import BACKENDS, MODES, PACK_MAX_SEQLEN, resolve_backend, varlen_attention

__all__ = [
    "varlen_attention",
    "resolve_backend",
    "BACKENDS",
    "MODES",
    "PACK_MAX_SEQLEN",
    "pack_visible",
    "PackPlan",
    "plan_pack",
    "packed_mean",
    "sample_ids",
    "unpack",
    "seqlens_to_cu",
    "apply_act_bits",
    "softmax_8bit",
    "attention_core_8bit",
    "Linear8",
    "GELU8",
    "SiLU8",
    "LayerNorm8",
    "Softmax8",
]
