"""Hiera4D: a dimension-generic Hiera encoder over visible mask units (time, z, y, x for fMRI).

Hiera (Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
Bells-and-Whistles", https://arxiv.org/abs/2306.00989), written for any number
of dimensions like the official code, with two changes for SLIM-Brain:

* tokens live unit-major ([U, T_u, D], see :mod:`~foundation.modalities.fmri.hiera_utils`),
  so masked and background-only mask units are deleted before the first block
  and samples may keep different numbers of units;
* global attention (samples keep different numbers of units) goes through
  :func:`foundation.kernels.varlen_attention` with one segment per sample; mask-unit
  attention is one batched SDPA over [U, H, T_u, Dh] (every unit has T_u tokens, so
  no padding and no ragged kernel is needed), as is global attention in a q-pooling
  block (q and k differ in length there; one SDPA per sample).

Parameter names follow the ``hiera-transformer`` package (``patch_embed.proj``,
``pos_embed[_spatial|_temporal]``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2,proj}``,
``norm``), so :mod:`~foundation.modalities.fmri.convert_hiera` maps weights one to one.
A patch embedding with kernel == stride is a linear map of each patch (any N);
other kernels use ``conv{1,2,3}d`` (N <= 3, as Hiera's video models).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.hub.mixin import HubMixin
from foundation.kernels import varlen_attention
from foundation.layers.create_mlp import make_mlp
from foundation.layers.noble import apply_noble

__all__ = ["Hiera4DConfig", "Hiera4D", "PatchEmbedND", "MaskUnitAttention", "HieraBlock"]


@dataclass
class Hiera4DConfig:
    """Plain-data configuration of :class:`Hiera4D` (defaults: the released SLIM-Brain size)."""

    input_size: tuple[int, ...] = field(default=(40, 96, 96, 96), metadata={"help": "input grid (T, Z, Y, X) in frames/voxels"})
    in_chans: int = field(default=1, metadata={"help": "input channels C"})
    embed_dim: int = field(default=64, metadata={"help": "width of stage 1"})
    num_heads: int = field(default=1, metadata={"help": "heads of stage 1"})
    stages: tuple[int, ...] = field(default=(2, 3, 16, 3), metadata={"help": "blocks per stage"})
    q_pool: int = field(default=2, metadata={"help": "stage transitions that pool q (and tokens)"})
    q_stride: tuple[int, ...] = field(default=(2, 2, 2, 2), metadata={"help": "pooling stride per dimension"})
    mask_unit_size: tuple[int, ...] = field(default=(8, 8, 8, 8), metadata={"help": "tokens per mask unit per dimension (= q_stride ** (stages - 1))"})
    mask_unit_attn: tuple[bool, ...] = field(default=(True, True, False, False), metadata={"help": "mask-unit (True) or global attention per stage"})
    dim_mul: float = field(default=2.0, metadata={"help": "width multiplier per stage"})
    head_mul: float = field(default=2.0, metadata={"help": "heads multiplier per stage"})
    patch_kernel: tuple[int, ...] = field(default=(1, 4, 4, 4), metadata={"help": "patch embedding kernel"})
    patch_stride: tuple[int, ...] = field(default=(1, 4, 4, 4), metadata={"help": "patch embedding stride"})
    patch_padding: tuple[int, ...] = field(default=(0, 0, 0, 0), metadata={"help": "patch embedding padding"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden width / width"})
    mlp: str = field(default="mlp", metadata={"help": "MLP kind (MLPS registry)"})
    activation: str = field(default="gelu", metadata={"help": "MLP activation (ACTIVATIONS registry)"})
    drop_path_rate: float = field(default=0.0, metadata={"help": "stochastic depth at the last block (linear ramp)"})
    sep_pos_embed: bool = field(default=True, metadata={"help": "separate temporal + spatial position embeddings"})
    backend: str = field(default="auto", metadata={"help": "varlen attention backend: auto, triton, reference"})
    noble_rank: int = field(default=32, metadata={"help": "rank of the encoder's NOBLE branches (mlp: noble, "
                                                          "noble_attention); the JEPA predictor's stay at 32"})
    noble_attention: bool = field(default=False, metadata={"help": "NOBLE branches on every block's attention qkv "
                                                                   "and proj linears"})

    def __post_init__(self) -> None:
        if self.noble_rank < 1:
            raise ConfigError(f"Hiera4DConfig.noble_rank must be >= 1, got {self.noble_rank}")
        for name in ("input_size", "q_stride", "mask_unit_size", "patch_kernel", "patch_stride", "patch_padding", "stages", "mask_unit_attn"):
            setattr(self, name, tuple(getattr(self, name)))
        n = len(self.input_size)
        for name in ("q_stride", "mask_unit_size", "patch_kernel", "patch_stride", "patch_padding"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"Hiera4DConfig.{name} has {len(getattr(self, name))} entries, input_size {n}; give one per dimension")
        if len(self.mask_unit_attn) != len(self.stages):
            raise ConfigError(f"Hiera4DConfig.mask_unit_attn has {len(self.mask_unit_attn)} entries, stages {len(self.stages)}")
        if not 0 <= self.q_pool < len(self.stages):
            raise ConfigError(f"Hiera4DConfig.q_pool must be in [0, {len(self.stages) - 1}], received {self.q_pool}")
        L = len(self.stages) - 1
        want = tuple(s**L for s in self.q_stride)
        if self.mask_unit_size != want:
            raise ConfigError(
                f"Hiera4DConfig.mask_unit_size {self.mask_unit_size} must equal q_stride ** (len(stages) - 1) = {want}"
            )
        for i, (size, st, mu) in enumerate(zip(self.input_size, self.patch_stride, self.mask_unit_size)):
            if size % st or (size // st) % mu:
                raise ConfigError(
                    f"Hiera4DConfig: dimension {i}: input {size} / patch stride {st} = {size / st} tokens must be a "
                    f"multiple of mask_unit_size {mu}; change input_size (the data grid/window) or the patch"
                )
        if self.sep_pos_embed and n < 2:
            raise ConfigError("Hiera4DConfig.sep_pos_embed needs at least 2 dimensions (time + space)")

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(i // s for i, s in zip(self.input_size, self.patch_stride))

    @property
    def unit_grid(self) -> tuple[int, ...]:
        return tuple(t // m for t, m in zip(self.tokens, self.mask_unit_size))


class PatchEmbedND(nn.Module):
    """Patch embedding ``[B, C, *S] -> [B, *S', D]`` with a conv-shaped weight [D, C, *kernel]."""

    def __init__(self, in_chans: int, dim: int, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), tuple(padding)
        self.linear = self.kernel == self.stride and not any(self.padding)
        if not self.linear and len(self.kernel) > 3:
            raise ConfigError(f"PatchEmbedND: {len(self.kernel)}D patches need kernel == stride and no padding, received kernel {kernel}, stride {stride}")
        self.proj = _ConvWeight(in_chans, dim, self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, *S] -> tokens [B, *S', D]."""
        w, b = self.proj.weight, self.proj.bias
        if not self.linear:
            conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel) - 1]
            return conv(x, w, b, self.stride, self.padding).movedim(1, -1)  # [B, D, *S'] -> [B, *S', D]
        return F.linear(self.patches(x), w.flatten(1), b)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The voxels of each patch as one row (kernel == stride): x [B, C, *S] -> [B, *S', C * k0 * k1 * ...].

        Two copies instead of one: the last axis moves whole first ([B, g0.., C, k0.., S_last], runs of S_last
        voxels), then its patches are interleaved ([.., M, g_last, k_last] -> [.., g_last, M, k_last]). One
        permute of all 2N + 2 axes copies runs of k_last voxels (2 for a 2x2x2x2 patch) and took 2.7x as long
        (``benchmarks/RESULTS.md``, "Issue 16, fewer ops in the eager step"). The values are the same.
        """
        B, C = x.shape[:2]
        n = len(self.kernel)
        grid = [s // k for s, k in zip(x.shape[2:], self.kernel)]
        if n == 1:
            return x.reshape(B, C, grid[0], self.kernel[0]).transpose(1, 2).reshape(B, grid[0], -1)
        head = [v for g, k in zip(grid[:-1], self.kernel[:-1]) for v in (g, k)]
        x = x.reshape(B, C, *head, x.shape[-1])  # [B, C, *S] -> [B, C, g0, k0, .., g_{n-2}, k_{n-2}, S_last]
        order = [0] + [2 + 2 * i for i in range(n - 1)] + [1] + [3 + 2 * i for i in range(n - 1)] + [2 * n]
        x = x.permute(order).contiguous()  # -> [B, g0, .., g_{n-2}, C, k0, .., k_{n-2}, S_last]
        x = x.view(B, *grid[:-1], -1, grid[-1], self.kernel[-1]).transpose(-3, -2)  # -> [B, g0.., g_last, M, k_last]
        return x.reshape(B, *grid, -1)  # -> [B, g0, .., g_last, C * k0 * .. * k_last]


class _ConvWeight(nn.Module):
    """Holds ``weight`` [D, C, *kernel] and ``bias`` [D] (the names of an nn.ConvNd, for weight loading)."""

    def __init__(self, in_chans: int, dim: int, kernel: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, in_chans, *kernel))
        self.bias = nn.Parameter(torch.empty(dim))
        fan_in = in_chans * math.prod(kernel)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


def _sample_drop_path(x: torch.Tensor, p: float, training: bool, units_cu: torch.Tensor) -> torch.Tensor:
    """Stochastic depth with one draw per sample, shared by its units: x [U, T, D]."""
    if p == 0.0 or not training:
        return x
    counts = (units_cu[1:] - units_cu[:-1]).to(torch.long)
    keep = x.new_empty(counts.numel()).bernoulli_(1 - p)
    return x * torch.repeat_interleave(keep, counts, output_size=x.shape[0])[:, None, None] / (1 - p)  # [B] -> [U, 1, 1]


def _unit_counts(units_cu: torch.Tensor, counts: Sequence[int] | None) -> list[int]:
    """Units per sample as host ints: ``counts`` when the caller knows them (no device read), else read once."""
    return list(counts) if counts is not None else (units_cu[1:] - units_cu[:-1]).tolist()


class MaskUnitAttention(nn.Module):
    """Mask-unit or global attention over unit-major tokens, with optional q pooling (Hiera's MaskUnitAttention).

    Args:
        dim: input width. dim_out: output width. heads: H.
        q_stride: flattened pooling stride (1 = none). use_mask_unit_attn: attention inside each unit.
        backend: varlen attention backend.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int = 1, use_mask_unit_attn: bool = False, backend: str = "auto") -> None:
        super().__init__()
        if dim_out % heads:
            raise ConfigError(f"MaskUnitAttention: width {dim_out} is not divisible by heads {heads}")
        self.dim_out, self.heads, self.head_dim = dim_out, heads, dim_out // heads
        self.q_stride, self.use_mask_unit_attn, self.backend = q_stride, use_mask_unit_attn, backend
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, units_cu: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
        """x [U, T, D] (units of all samples, sample-major), units_cu [B + 1] -> [U, T / q_stride, D_out].

        ``counts``: the B per-sample unit counts as host ints (what ``units_cu`` holds), when the caller knows
        them: then nothing is read from the device (one graph under ``torch.compile``).
        """
        U, T, _ = x.shape
        H, Dh, s = self.heads, self.head_dim, self.q_stride
        q, k, v = self.qkv(x).reshape(U, T, 3, H, Dh).unbind(2)  # [U, T, 3D'] -> 3 x [U, T, H, Dh]
        if s > 1:
            q = q.view(U, s, T // s, H, Dh).amax(dim=1)  # [U, T, H, Dh] -> [U, T/s, H, Dh]
        Tq = q.shape[1]
        if self.use_mask_unit_attn:  # every unit has T tokens: one dense batched SDPA, no padding
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        elif s == 1:
            cu = (units_cu * T).to(torch.int32)  # one segment per sample
            max_len = max(_unit_counts(units_cu, counts), default=0) * T
            o = varlen_attention(q.reshape(U * T, H, Dh), k.reshape(U * T, H, Dh), v.reshape(U * T, H, Dh), cu, max_len,
                                 scale=Dh**-0.5, backend=self.backend).view(U, T, H, Dh)
        else:  # global attention with q pooling: q and k differ in length, one SDPA per sample
            outs, ends = [], list(itertools.accumulate(_unit_counts(units_cu, counts), initial=0))
            for a, b in zip(ends[:-1], ends[1:]):
                qs, ks, vs = (t[a:b].reshape(1, -1, H, Dh).transpose(1, 2) for t in (q, k, v))  # [1, H, n, Dh]
                outs.append(F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2).reshape(b - a, Tq, H, Dh))
            o = torch.cat(outs)
        return self.proj(o.reshape(U, Tq, self.dim_out))  # [U, Tq, H, Dh] -> [U, Tq, D']


class HieraBlock(nn.Module):
    """Hiera block: x = pool(proj(norm1 x)) + attn(norm1 x); x = x + mlp(norm2 x)."""

    def __init__(self, dim: int, dim_out: int, heads: int, mlp_ratio: float, drop_path: float, q_stride: int,
                 use_mask_unit_attn: bool, mlp: str = "mlp", activation: str = "gelu", backend: str = "auto",
                 mlp_kwargs: dict | None = None) -> None:
        super().__init__()
        self.dim, self.dim_out, self.drop_path = dim, dim_out, drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, use_mask_unit_attn, backend)
        self.norm2 = nn.LayerNorm(dim_out)
        self.mlp = make_mlp(mlp, dim_out, int(dim_out * mlp_ratio), dim_out, activation, where="Hiera4DConfig.mlp",
                            **(mlp_kwargs or {}))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor, units_cu: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
        """x [U, T, D] -> [U, T / q_stride, D_out]; ``counts`` as in :meth:`MaskUnitAttention.forward`."""
        x_norm = self.norm1(x)
        if self.dim != self.dim_out:
            y = self.proj(x_norm)
            s = self.attn.q_stride
            x = y.view(y.shape[0], s, -1, y.shape[-1]).amax(dim=1)  # [U, T, D'] -> [U, T/s, D']
        x = x + _sample_drop_path(self.attn(x_norm, units_cu, counts), self.drop_path, self.training, units_cu)
        return x + _sample_drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training, units_cu)


class Hiera4D(nn.Module, HubMixin):
    """Hierarchical encoder over (time, z, y, x) patches that sees only the kept mask units.

    ``keep`` (in :meth:`forward_units` / :meth:`forward_features`) holds the indices of
    kept mask units (row-major over :attr:`Hiera4DConfig.unit_grid`); every other unit is
    deleted before the first block. ``embed_dim`` is the width of the last stage.
    """

    model_name = "hiera4d"
    config_class = Hiera4DConfig

    def __init__(self, config: Hiera4DConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedND(c.in_chans, c.embed_dim, c.patch_kernel, c.patch_stride, c.patch_padding)
        tokens = c.tokens
        if c.sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, math.prod(tokens[1:]), c.embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, tokens[0], c.embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(tokens), c.embed_dim))
        self.n_unroll = len(c.stages) - 1
        self.n_units = math.prod(c.unit_grid)
        self.unit_tokens = math.prod(c.mask_unit_size)
        flat_q = math.prod(c.q_stride)
        stage_ends = [sum(c.stages[: i + 1]) - 1 for i in range(len(c.stages))]
        q_pool_blocks = {e + 1 for e in stage_ends[: c.q_pool]}
        depth = sum(c.stages)
        dpr = torch.linspace(0, c.drop_path_rate, depth).tolist()
        dim, heads, stage = c.embed_dim, c.num_heads, 0
        self.blocks = nn.ModuleList()
        self.final_unit_tokens = self.unit_tokens
        for i in range(depth):
            dim_out = dim
            use_mu = c.mask_unit_attn[stage]  # lags one block behind the stage, as in Hiera
            if i - 1 in stage_ends:
                dim_out, heads, stage = int(dim * c.dim_mul), int(heads * c.head_mul), stage + 1
            stride = flat_q if i in q_pool_blocks else 1
            self.final_unit_tokens //= stride
            self.blocks.append(HieraBlock(dim, dim_out, heads, c.mlp_ratio, dpr[i], stride, use_mu, c.mlp, c.activation, c.backend,
                                          mlp_kwargs={"rank": c.noble_rank} if c.mlp == "noble" else None))
            dim = dim_out
        if c.noble_attention:
            apply_noble(self.blocks, r"\d+\.attn\.(qkv|proj)", rank=c.noble_rank)
        self.norm = nn.LayerNorm(dim)
        self.embed_dim = dim
        for p in [getattr(self, n) for n in ("pos_embed", "pos_embed_spatial", "pos_embed_temporal") if hasattr(self, n)]:
            nn.init.trunc_normal_(p, std=0.02)

    def pos(self) -> torch.Tensor:
        """Position embedding [1, N, D] in row-major token order."""
        if self.config.sep_pos_embed:
            t = self.config.tokens[0]
            s = self.pos_embed_spatial.shape[1]
            return self.pos_embed_spatial.repeat(1, t, 1) + torch.repeat_interleave(self.pos_embed_temporal, s, dim=1)
        return self.pos_embed

    def forward_units(self, x: torch.Tensor, keep: list[torch.Tensor] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the kept mask units.

        Args:
            x: input [B, C, T, Z, Y, X] (or [B, T, Z, Y, X] when C = 1).
            keep: per sample, indices of kept units (a [B, K] tensor or a list of [K_b] tensors); None keeps all.

        Returns:
            (tokens [U, T_f, D] of the kept units, sample-major and in ``keep`` order, units_cu [B + 1] int32).
        """
        n = len(self.config.input_size)
        if x.dim() == n + 1:
            x = x.unsqueeze(1)  # [B, T, Z, Y, X] -> [B, 1, T, Z, Y, X]
        if x.dim() != n + 2 or tuple(x.shape[2:]) != self.config.input_size or x.shape[1] != self.config.in_chans:
            raise DataError(f"Hiera4D: x must be [B, {self.config.in_chans}, {', '.join(map(str, self.config.input_size))}]"
                            f" (or without the channel axis when it is 1), received {list(x.shape)}; resample the "
                            "windows to the model's input_size or build the model for this grid")
        B = x.shape[0]
        if keep is not None and not self.patch_embed.linear:
            x = x * self._voxel_keep_mask(keep, B, x)  # as Hiera's masked conv: deleted units are zero for neighbours
        tok = self._unit_tokens(x)  # [B, U, T_u, D]
        if keep is None:
            counts = [self.n_units] * B
            h = tok.flatten(0, 1)  # [B, U, T_u, D] -> [B * U, T_u, D]
        else:
            h = torch.cat([tok[b, keep[b]] for b in range(B)])  # -> [sum K_b, T_u, D]
            counts = [len(k) for k in keep]  # host ints (the index tensors' sizes): no device read
        units_cu = F.pad(torch.tensor(counts, dtype=torch.int32).cumsum(0), (1, 0)).to(device=x.device, dtype=torch.int32)
        for blk in self.blocks:
            h = blk(h, units_cu, counts)
        return h, units_cu

    def _unit_order(self) -> tuple[list[int], list[int]]:
        """Split and order of the grid axes for :func:`~.hiera_utils.unit_permutation`'s layout.

        Every token axis t_d splits into (u_d, r_L, ..., r_1); the order is every u, then every r_1, ...,
        every r_L.

        Returns:
            (the sizes after the split; the permutation of the split axes)
        """
        c, L = self.config, self.n_unroll
        sizes: list[int] = []
        for t, s in zip(c.tokens, c.q_stride):
            sizes += [t // s**L] + [s] * L
        width, n = L + 1, len(c.tokens)
        order = [d * width for d in range(n)]  # u over all dims
        for k in range(1, L + 1):  # r_1 (offset L) ... r_L (offset 1)
            order += [d * width + (L + 1 - k) for d in range(n)]
        return sizes, order

    def _to_units(self, t: torch.Tensor) -> torch.Tensor:
        """Row-major tokens [B, *tokens, F] -> unit-major [B, U, T_u, F] (one permute, no gather)."""
        sizes, order = self._unit_order()
        B, F_ = t.shape[0], t.shape[-1]
        t = t.reshape(B, *sizes, F_)  # [B, *tokens, F] -> [B, (u, r_L..r_1) per dim, F]
        last = len(order) + 1
        t = t.permute(0, *(o + 1 for o in order), last)  # -> [B, u.., r_1.., .., r_L.., F]
        return t.reshape(B, self.n_units, self.unit_tokens, F_)

    def _unit_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Embedded tokens plus position embedding, in unit-major order: [B, C, *S] -> [B, U, T_u, D].

        The position embedding is added in row-major order and the sum reordered once (one permute of the
        D-wide tokens). Folding the reordering into the voxel permute of the patch embedding instead (an
        18-axis copy with 2-element runs for a 4D 2x2x2x2 patch) took longer, forward and backward (measured in
        ``benchmarks/RESULTS.md``, "Issue 16, the step and the engine"); the values are the same.
        """
        return self._to_units(self.patch_embed(x) + self.pos().view(1, *self.config.tokens, -1))

    def _voxel_keep_mask(self, keep, B: int, x: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(B, self.n_units, device=x.device, dtype=x.dtype)
        for b in range(B):
            m[b, keep[b]] = 1
        m = m.view(B, 1, *self.config.unit_grid)
        return F.interpolate(m, size=x.shape[2:], mode="nearest")

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised tokens of the kept units.

        Args:
            x: [B, C, T, Z, Y, X] or [B, T, Z, Y, X].
            keep: [B, K] kept unit indices (same K for every sample), or None for all units.

        Returns:
            [B, K * T_f, D] (unit-major).
        """
        h, _ = self.forward_units(x, keep)
        B = x.shape[0]
        return self.norm(h.reshape(B, -1, h.shape[-1]))  # [B * K, T_f, D] -> [B, K * T_f, D]

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features [B, D]: mean over tokens, then the final norm (Hiera's order)."""
        h, _ = self.forward_units(x, keep)
        return self.norm(h.reshape(x.shape[0], -1, h.shape[-1]).mean(1))
