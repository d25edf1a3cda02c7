"""DeeperBrain: an EEG encoder over one-second channel patches that sees only visible patches.

DeeperBrain ("DeeperBrain: a neuro-grounded EEG foundation model", arXiv link unverified).
A window x [B, C, T] is cut into one patch per channel per second (P = T / patch_size patches per
channel, N = C * P tokens, channel-major: token n = c * P + p). Each patch is embedded linearly,
plus a projection of its log amplitude spectrum (as CBraMod's spectral patch embedding,
https://arxiv.org/abs/2412.07236; ``spectral_embed``);
the volume-conduction channel encoding and the neurodynamics temporal encoding
(:mod:`.encoding`) are added. Masked and padded tokens are deleted before the encoder: the
visible tokens of all samples are packed into one buffer [K, D] and the transformer blocks of the
layer library attend through ``varlen_attention`` with ``cu_seqlens`` (masked-autoencoder style,
He et al. 2021, https://arxiv.org/abs/2111.06377). A light decoder (mask tokens + encodings)
reconstructs the masked patches; a statistics head predicts each channel's neurodynamics
statistics from the channel's visible encoder tokens.

Sizes of the ``deeperbrain`` recipe are (unverified) base-size choices.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.hub.mixin import HubMixin
from foundation.kernels.packing import PackPlan, pack_visible, packed_mean, plan_pack, sample_ids
from foundation.layers.block import Block
from foundation.layers.noble import apply_noble
from foundation.modalities.eeg.encoding import ChannelEncoding, TemporalEncoding

__all__ = ["DeeperBrainConfig", "DeeperBrain"]


def _log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + x) elementwise, within 2e-7 relative of ``torch.log1p`` and about 4x faster on CPU, where ATen's
    ``log1p`` is not vectorised (measured in ``benchmarks/RESULTS.md``, "Issue 16, the step and the engine").

    The classic correction (Goldberg, "What every computer scientist should know about floating-point
    arithmetic", 1991, theorem 4): with u = fl(1 + x), log1p(x) = log(u) * x / (u - 1), and x where u == 1.
    Training feeds it spectral magnitudes of the data, which carry no gradient; where the input is differentiated
    (attributions) it is ATen's ``log1p`` with its exact derivative.
    """
    if x.requires_grad:
        return torch.log1p(x)
    u = x + 1.0
    d = u - 1.0
    return torch.where(d == 0, x, torch.log(u) * (x / d))


@dataclass
class DeeperBrainConfig:
    """DeeperBrain sizes; MLP kind and activation come from the recipe."""

    patch_size: int = field(default=200, metadata={"help": "samples per patch (1 s at 200 Hz)"})
    embed_dim: int = field(default=256, metadata={"help": "encoder width D"})
    depth: int = field(default=8, metadata={"help": "encoder blocks"})
    num_heads: int = field(default=8, metadata={"help": "encoder attention heads"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden width / D"})
    mlp: str = field(default="mlp", metadata={"help": "MLP kind: mlp, kan, skan, afkan, noble"})
    activation: str = field(default="gelu", metadata={"help": "activation name (gelu, crrelu, ash, ...)"})
    attention: str = field(default="softmax", metadata={"help": "encoder attention: softmax, or karat (Fourier-KArAt; "
                                                                "a sample may hold at most karat_max_tokens visible tokens)"})
    karat_max_tokens: int = field(default=256, metadata={"help": "longest row of KArAt's operator (attention: karat)"})
    noble_rank: int = field(default=32, metadata={"help": "rank of the NOBLE branches (mlp: noble, noble_attention)"})
    noble_attention: bool = field(default=False, metadata={"help": "NOBLE branches on the encoder attention's qkv "
                                                                   "and proj linears"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth of the deepest block (linear ramp)"})
    decoder_dim: int = field(default=128, metadata={"help": "decoder width"})
    decoder_depth: int = field(default=2, metadata={"help": "decoder blocks"})
    decoder_heads: int = field(default=4, metadata={"help": "decoder attention heads"})
    n_stats: int = field(default=8, metadata={"help": "statistics per channel predicted by the statistics head"})
    tau_init: float = field(default=0.08, metadata={"help": "initial volume-conduction decay length in metres (unverified)"})
    n_freqs: int = field(default=8, metadata={"help": "slow oscillation bases of the temporal encoding (0.01-0.5 Hz)"})
    n_decays: int = field(default=4, metadata={"help": "exponential-decay bases of the temporal encoding (1-100 s)"})
    attention_backend: str = field(default="auto", metadata={"help": "varlen attention backend: auto, triton, reference"})
    spectral_embed: bool = field(default=True, metadata={"help": "add a projection of each patch's log amplitude "
                                                                 "spectrum to its embedding (CBraMod-style)"})
    input_norm: str = field(default="window", metadata={"help": "'window': divide each window by its std over real "
                                                               "channels and samples (unverified); 'none': raw units"})

    def __post_init__(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "decoder_dim", "decoder_depth", "decoder_heads", "n_stats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.input_norm not in ("window", "none"):
            raise ConfigError(f"model.input_norm: unknown value {self.input_norm!r}; valid: none, window")
        if self.attention not in ("softmax", "karat"):
            raise ConfigError(f"model.attention: unknown value {self.attention!r}; valid: karat, softmax")
        if self.karat_max_tokens < 1 or self.noble_rank < 1:
            raise ConfigError(f"model.karat_max_tokens and model.noble_rank must be >= 1, got "
                              f"{self.karat_max_tokens} and {self.noble_rank}")
        for d, h in (("embed_dim", "num_heads"), ("decoder_dim", "decoder_heads")):
            if getattr(self, d) % getattr(self, h):
                raise ConfigError(f"model.{d}={getattr(self, d)} must be divisible by model.{h}={getattr(self, h)}")


class DeeperBrain(nn.Module, HubMixin):
    """DeeperBrain encoder + reconstruction decoder + statistics head.

    Args:
        config: a :class:`DeeperBrainConfig`.
    """

    model_name = "deeperbrain"
    config_class = DeeperBrainConfig

    def __init__(self, config: DeeperBrainConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed_dim = D = c.embed_dim
        self.patch_embed = nn.Linear(c.patch_size, D)
        self.spectral_embed = nn.Linear(c.patch_size // 2 + 1, D) if c.spectral_embed else None
        self.chan_enc = ChannelEncoding(D, c.tau_init)
        self.time_enc = TemporalEncoding(D, c.n_freqs, n_decays=c.n_decays)
        dpr = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        attn = {"backend": c.attention_backend}
        enc_attn = {"max_tokens": c.karat_max_tokens} if c.attention == "karat" else attn
        mlp_kw = {"rank": c.noble_rank} if c.mlp == "noble" else {}
        self.blocks = nn.ModuleList(
            Block(D, c.num_heads, c.mlp_ratio, attention=c.attention, mlp=c.mlp, activation=c.activation,
                  drop_path=p, attn_kwargs=enc_attn, mlp_kwargs=mlp_kw)
            for p in dpr)
        if c.noble_attention:
            apply_noble(self.blocks, r"\d+\.attn\.(qkv|proj)", rank=c.noble_rank)
        self.norm = nn.LayerNorm(D)
        Dd = c.decoder_dim
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(Dd))
        self.decoder_chan_enc = ChannelEncoding(Dd, c.tau_init)
        self.decoder_time_enc = TemporalEncoding(Dd, c.n_freqs, n_decays=c.n_decays)
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, c.decoder_heads, c.mlp_ratio, mlp=c.mlp, activation=c.activation, attn_kwargs=attn,
                  mlp_kwargs=mlp_kw)
            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd)
        self.decoder_pred = nn.Linear(Dd, c.patch_size)
        self.stats_norm = nn.LayerNorm(D)
        self.stats_head = nn.Linear(D, c.n_stats)
        nn.init.normal_(self.mask_token, std=0.02)

    # ----------------------------------------------------------------- tokens
    def _check(self, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor | None) -> tuple[int, int, int]:
        if x.dim() != 3:
            raise DataError(f"DeeperBrain: x must be [B, C, T], received {list(x.shape)}")
        B, C, T = x.shape
        if T % self.config.patch_size:
            raise DataError(f"DeeperBrain: T = {T} samples is not a multiple of patch_size = {self.config.patch_size}; "
                            "cut windows of whole seconds at the model's sampling rate")
        if tuple(pos.shape) != (B, C, 3):
            raise DataError(f"DeeperBrain: pos must be [B, C, 3] = {[B, C, 3]}, received {list(pos.shape)}")
        if chan_mask is not None and (chan_mask.dtype != torch.bool or tuple(chan_mask.shape) != (B, C)):
            raise DataError(f"DeeperBrain: chan_mask must be bool [B, C] = {[B, C]}, received {chan_mask.dtype} "
                            f"{list(chan_mask.shape)}")
        return B, C, T // self.config.patch_size

    def valid_tokens(self, chan_mask: torch.Tensor, n_patches: int) -> torch.Tensor:
        """Token validity [B, N] (True = a real channel's patch) from chan_mask [B, C]."""
        return chan_mask[:, :, None].expand(-1, -1, n_patches).reshape(chan_mask.shape[0], -1)  # [B, C, P] -> [B, N]

    def patch_times(self, n_patches: int, device: torch.device) -> torch.Tensor:
        """Patch centre times [P] in seconds (centres, so 0.5 Hz bases do not vanish at whole seconds)."""
        return torch.arange(n_patches, device=device, dtype=torch.float32) + 0.5

    def scale_input(self, x: torch.Tensor, chan_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input scaling of ``config.input_norm``: x [B, C, T] -> [B, C, T].

        "window" divides each window by its std over real channels and samples, so that gains of
        amplifiers and subjects drop out while relative amplitude across channels and time stays (the
        statistics targets are scale-free). Padded channels do not enter the scale. The scale is one
        scalar per window computed before masking (masked patches enter it, nothing else of them does).
        """
        if self.config.input_norm == "none":
            return x
        xf = x.float()
        m = torch.ones_like(xf[:, :, :1]) if chan_mask is None else chan_mask[:, :, None].float()  # [B, C, 1]
        n = (m.sum((1, 2), keepdim=True) * x.shape[-1]).clamp(min=1)
        mean = (xf * m).sum((1, 2), keepdim=True) / n
        dev = (xf - mean) * m
        std = (dev * dev).sum((1, 2), keepdim=True).div(n).sqrt()  # population std over real samples (d * d: ATen's
        return (xf / (std + 1e-6)).to(x.dtype)  # CPU pow is not vectorised; the same values as d ** 2)

    def tokens(self, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor | None = None, *,
               scaled: bool = False, chan_code: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded tokens of every patch with both encodings added: x [B, C, T] -> [B, N, D], N = C * P.

        ``scaled``: x is already :meth:`scale_input`'s output (the objective scales it once for the model and its
        target). ``chan_code``: ``self.chan_enc(pos, chan_mask)`` [B, C, D] when the caller has it already.
        """
        B, C, P = self._check(x, pos, chan_mask)
        if not scaled:
            x = self.scale_input(x, chan_mask)
        patches = x.reshape(B, C, P, self.config.patch_size)  # [B, C, T] -> [B, C, P, patch]
        tok = self._embed(patches)  # [B, C, P, D]
        if chan_code is None:
            chan_code = self.chan_enc(pos, chan_mask)  # [B, C, D]
        tok = tok + chan_code[:, :, None, :] + self.time_enc(self.patch_times(P, x.device))[None, None]
        return tok.reshape(B, C * P, self.embed_dim)  # [B, C, P, D] -> [B, N, D]

    def _embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus the spectral projection: patches [..., patch] (scaled) -> [..., D]."""
        tok = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        if self.spectral_embed is not None:
            amp = torch.fft.rfft(patches.float(), dim=-1).abs()  # [..., patch // 2 + 1]
            tok = tok + self.spectral_embed(_log1p(amp).to(tok.dtype))
        return tok

    def visible_tokens(self, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor | None, plan: PackPlan, *,
                       scaled: bool = False, chan_code: torch.Tensor | None = None) -> torch.Tensor:
        """The packed visible tokens of :meth:`tokens`, embedding only the visible patches: -> [K, D].

        Equal to ``pack_visible(self.tokens(x, pos, chan_mask), plan)[0]`` row for row (the same sums in the
        same order), without embedding, transforming and encoding the masked patches that the encoder deletes.

        Args:
            x: windows [B, C, T]; pos [B, C, 3]; chan_mask [B, C] bool or None.
            plan: the encoder's :class:`~foundation.kernels.PackPlan` over [B, N] (index ``b * N + c * P + p``).
            scaled, chan_code: as in :meth:`tokens`.
        """
        B, C, P = self._check(x, pos, chan_mask)
        if (plan.batch, plan.tokens) != (B, C * P):
            raise DataError(f"DeeperBrain: the PackPlan was made for [B, N] = {[plan.batch, plan.tokens]}, the "
                            f"windows give {[B, C * P]}; build it with mask_plans for this batch")
        if not scaled:
            x = self.scale_input(x, chan_mask)
        patches = x.reshape(B * C * P, self.config.patch_size).index_select(0, plan.index)  # [K, patch]
        tok = self._embed(patches)  # [K, D]
        if chan_code is None:
            chan_code = self.chan_enc(pos, chan_mask)  # [B, C, D]
        slot = torch.div(plan.index, P, rounding_mode="floor")  # b * N + c * P + p -> b * C + c
        tok = tok + chan_code.reshape(B * C, -1).index_select(0, slot)  # [K, D]
        time_code = self.time_enc(self.patch_times(P, x.device))  # [P, D]
        return tok + time_code.index_select(0, plan.index - slot * P)  # p of each token

    # ---------------------------------------------------------------- encoder
    def forward_features(self, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor | None = None,
                         keep: torch.Tensor | Sequence[torch.Tensor] | PackPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the visible patches.

        Args:
            x: windows [B, C, T] (T a multiple of patch_size).
            pos: electrode positions [B, C, 3] in metres.
            chan_mask: [B, C] bool, True = real channel (None: all real).
            keep: indices of visible tokens (token n = c * P + p), as [B, K] or a list of B 1-D tensors
                of variable length, or their :class:`~foundation.kernels.PackPlan`; None = every token of a
                real channel. Tokens not listed are deleted before the blocks.

        Returns:
            ``(tokens [sum K_b, D] packed, cu_seqlens [B + 1] int32)``: sample b's visible tokens are
            ``tokens[cu_seqlens[b]:cu_seqlens[b + 1]]`` in the order of ``keep[b]``.
        """
        return self._encode(self.tokens(x, pos, chan_mask), x, chan_mask, keep)

    def _encode(self, tok: torch.Tensor, x: torch.Tensor, chan_mask: torch.Tensor | None,
                keep: torch.Tensor | Sequence[torch.Tensor] | PackPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder over embedded tokens [B, N, D]: -> (packed [K, D], cu_seqlens [B + 1]); see
        :meth:`forward_features`."""
        if keep is None:
            mask = chan_mask if chan_mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            keep = self.valid_tokens(mask, tok.shape[1] // x.shape[1])  # bool [B, N]
        return self._blocks(*pack_visible(tok, keep))  # [B, N, D] -> [K, D]

    def _blocks(self, packed: torch.Tensor, cu: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder blocks and the final norm over packed tokens [K, D] -> ([K, D], cu_seqlens)."""
        for blk in self.blocks:
            packed = blk(packed, cu, max_len)
        return self.norm(packed), cu

    def pooled_features(self, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of every real token's encoding: [B, C, T] -> [B, D] (for probes)."""
        packed, cu = self.forward_features(x, pos, chan_mask)
        return packed_mean(packed, cu)  # [K, D] -> [B, D]

    # ------------------------------------------------------------------ heads
    def mask_plans(self, chan_mask: torch.Tensor, keep: Sequence[torch.Tensor] | torch.Tensor, n_patches: int,
                   device: torch.device | str | None = None) -> tuple[PackPlan, PackPlan]:
        """The packing of a masked batch, worked out once (host reads; the objective's ``prepare`` calls it
        before the compiled region): the encoder's visible tokens and the decoder's real-channel tokens.

        Args:
            chan_mask: [B, C] bool. n_patches: P.
            keep: B 1-D tensors of visible token indices, or the visible tokens as a bool mask [B, N] (the
                objective's ``prepare`` passes its mask: one host read of the lengths, no per-sample checks;
                the same plan as the sorted index lists).
            device: where the plans' tensors go (default: chan_mask's).

        Returns:
            ``(encoder plan over [B, N], decoder plan over [B, N])``, N = C * P.
        """
        B, C = chan_mask.shape
        device = chan_mask.device if device is None else device
        valid = self.valid_tokens(chan_mask, n_patches)  # [B, N]
        return plan_pack(keep, B, C * n_patches, device), plan_pack(valid, B, C * n_patches, device)

    def predict_stats(self, packed: torch.Tensor, cu: torch.Tensor, plan: PackPlan, pos: torch.Tensor,
                      chan_mask: torch.Tensor, n_patches: int, chan_code: torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel statistics from the channel's visible tokens: -> [B, C, S].

        A channel's tokens are averaged; a channel with no visible token takes the sample's mean.
        The channel encoding is added so that the head knows where each channel sits (``chan_code``:
        ``self.chan_enc(pos, chan_mask)`` [B, C, D] when the caller has it already, as :meth:`forward` does).
        """
        B, C = chan_mask.shape
        slot = torch.div(plan.index, n_patches, rounding_mode="floor")  # b * N + c * P + p -> b * C + c
        sums = packed.new_zeros(B * C, packed.shape[1]).index_add_(0, slot, packed)
        cnt = packed.new_zeros(B * C).index_add_(0, slot, packed.new_ones(slot.shape))[:, None]  # [B * C, 1]
        per_sample = packed_mean(packed, cu)  # [K, D] -> [B, D]
        pooled = torch.where(cnt > 0, sums / cnt.clamp(min=1), per_sample.repeat_interleave(C, 0))
        if chan_code is None:
            chan_code = self.chan_enc(pos, chan_mask)  # [B, C, D]
        pooled = pooled.reshape(B, C, -1) + chan_code  # [B * C, D] -> [B, C, D]
        return self.stats_head(self.stats_norm(pooled))

    def decode(self, packed: torch.Tensor, plans: tuple[PackPlan, PackPlan], pos: torch.Tensor,
               chan_mask: torch.Tensor, n_patches: int) -> torch.Tensor:
        """Reconstruct every patch from the visible encodings: -> [B, N, patch_size] (zeros at padded channels).

        ``plans``: :meth:`mask_plans`' encoder and decoder plans.
        """
        enc_plan, dec_plan = plans
        B, C = chan_mask.shape
        N = C * n_patches
        vis = self.decoder_embed(packed)  # [K, Dd]
        enc = (self.decoder_chan_enc(pos, chan_mask)[:, :, None, :]
               + self.decoder_time_enc(self.patch_times(n_patches, packed.device))[None, None])
        full = self.mask_token.to(vis.dtype).expand(B * N, -1)  # [B * N, Dd]
        full = full.index_put((enc_plan.index,), vis).view(B, N, -1)  # scatter [K, Dd] -> [B, N, Dd]
        full = full + enc.reshape(B, N, -1).to(vis.dtype)  # [B, C, P, Dd] -> [B, N, Dd]
        dpk, dcu, dmax = pack_visible(full, dec_plan)  # [B, N, Dd] -> [Kv, Dd]
        for blk in self.decoder_blocks:
            dpk = blk(dpk, dcu, dmax)
        pred = self.decoder_pred(self.decoder_norm(dpk))  # [Kv, patch]
        out = pred.new_zeros(B * N, pred.shape[-1]).index_put((dec_plan.index,), pred)  # [Kv, patch] -> [B*N, patch]
        return out.view(B, N, -1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor, keep: Sequence[torch.Tensor],
                plans: tuple[PackPlan, PackPlan] | None = None, *, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked reconstruction and statistics prediction.

        Args:
            x: windows [B, C, T].
            pos: positions [B, C, 3].
            chan_mask: [B, C] bool, True = real channel.
            keep: B 1-D tensors of visible token indices (only real channels' tokens).
            plans: :meth:`mask_plans` of ``keep``, made in advance (the objective's ``prepare``), so that this
                forward reads nothing from the data on the host (one graph under ``torch.compile``); None
                makes them here.
            scaled: x is :meth:`scale_input`'s output already (the objective scales once for input and target).

        The channel encoding is computed once and shared by the encoder's tokens and the statistics head; only
        the visible patches are embedded (:meth:`visible_tokens`).

        Returns:
            ``(reconstruction [B, N, patch_size], statistics [B, C, S])``.
        """
        P = x.shape[-1] // self.config.patch_size
        if plans is None:
            plans = self.mask_plans(chan_mask, keep, P, x.device)
        chan_code = self.chan_enc(pos, chan_mask)  # [B, C, D], for the tokens and the statistics head
        packed = self.visible_tokens(x, pos, chan_mask, plans[0], scaled=scaled, chan_code=chan_code)  # [K, D]
        packed, cu = self._blocks(packed, plans[0].cu, plans[0].max_len)
        recon = self.decode(packed, plans, pos, chan_mask, P)
        return recon, self.predict_stats(packed, cu, plans[0], pos, chan_mask, P, chan_code)
