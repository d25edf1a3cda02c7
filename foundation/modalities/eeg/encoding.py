"""DeeperBrain's position encodings: volume-conduction channel encoding and neurodynamics temporal encoding.

DeeperBrain ("DeeperBrain: a neuro-grounded EEG foundation model", arXiv link unverified):

- Channel encoding: scalp potentials mix by volume conduction, which falls with distance. With
  D_ij = ||p_i - p_j|| over 3D electrode positions, K_ij = exp(-D_ij / tau), tau = softplus(a)
  learnable (init about 8 cm, (unverified)), rows normalised to sum 1; the smoothed position
  sum_j K_ij p_j is projected to the model width and added to every token of channel i. It depends
  on the set of positions only, so permuting channels permutes the encodings.
- Temporal encoding: at each patch time t (the patch centre, in seconds), features
  [sin(2 pi f_k t), cos(2 pi f_k t)] for slow f_k log-spaced in 0.01-0.5 Hz and exp(-t / tau_m)
  for tau_m log-spaced in 1-100 s, projected to the model width.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from foundation.errors import ConfigError

__all__ = ["ChannelEncoding", "TemporalEncoding", "conduction_kernel"]

_POS_SCALE = 10.0  # metres -> decimetres, so projected positions are O(1)


def conduction_kernel(pos: torch.Tensor, tau: torch.Tensor, chan_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Row-normalised volume-conduction kernel over real channels.

    Args:
        pos: electrode positions [B, C, 3] in metres.
        tau: decay length in metres (scalar tensor).
        chan_mask: [B, C] bool, True = real channel (padded channels get zero weight), or None.

    Returns:
        K [B, C, C] with K[b, i, j] proportional to exp(-||p_i - p_j|| / tau) over real j, rows summing to 1.
    """
    d = torch.cdist(pos.float(), pos.float())  # [B, C, C]
    logits = -d / tau
    if chan_mask is not None:
        logits = logits.masked_fill(~chan_mask[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)  # exp(-d / tau) / sum_j exp(-d / tau), numerically safe


class ChannelEncoding(nn.Module):
    """Volume-conduction-aware channel encoding.

    Args:
        embed_dim: model width D.
        tau_init: initial decay length in metres (softplus(a) = tau_init).
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(self, embed_dim: int, tau_init: float = 0.08, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if tau_init <= 0:
            raise ConfigError(f"ChannelEncoding: tau_init must be > 0 metres, received {tau_init}")
        self.tau_init = tau_init
        self.a = nn.Parameter(torch.empty(1, device=device, dtype=dtype))  # [1], not a scalar: DeepSpeed broadcasts views
        self.proj = nn.Linear(3, embed_dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.a.fill_(math.log(math.expm1(self.tau_init)))  # inverse softplus
        self.proj.reset_parameters()

    @property
    def tau(self) -> torch.Tensor:
        """The decay length in metres, softplus(a) (a scalar tensor)."""
        return nn.functional.softplus(self.a[0])

    def forward(self, pos: torch.Tensor, chan_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode channels.

        Args:
            pos: electrode positions [B, C, 3] in metres.
            chan_mask: [B, C] bool, True = real channel; padded channels encode to zeros.

        Returns:
            [B, C, D].
        """
        k = conduction_kernel(pos, self.tau, chan_mask)  # [B, C, C]
        smooth = torch.bmm(k, pos.float())  # [B, C, C] @ [B, C, 3] -> [B, C, 3]
        out = self.proj((smooth * _POS_SCALE).to(self.proj.weight.dtype))
        if chan_mask is not None:
            out = out * chan_mask[..., None].to(out.dtype)
        return out


class TemporalEncoding(nn.Module):
    """Neurodynamics temporal encoding: slow oscillation and exponential-decay bases at each patch time.

    Args:
        embed_dim: model width D.
        n_freqs: slow oscillation frequencies, log-spaced in [f_min, f_max] Hz.
        f_min, f_max: frequency range in Hz.
        n_decays: decay time constants, log-spaced in [tau_min, tau_max] s.
        tau_min, tau_max: time-constant range in seconds.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(self, embed_dim: int, n_freqs: int = 8, f_min: float = 0.01, f_max: float = 0.5, n_decays: int = 4,
                 tau_min: float = 1.0, tau_max: float = 100.0, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if n_freqs < 1 or n_decays < 0 or not 0 < f_min <= f_max or not 0 < tau_min <= tau_max:
            raise ConfigError(f"TemporalEncoding: need n_freqs >= 1, n_decays >= 0, 0 < f_min <= f_max, 0 < tau_min <= "
                              f"tau_max; received {n_freqs}, {n_decays}, ({f_min}, {f_max}), ({tau_min}, {tau_max})")
        self.register_buffer("freqs", torch.logspace(math.log10(f_min), math.log10(f_max), n_freqs), persistent=False)
        self.register_buffer("taus", torch.logspace(math.log10(tau_min), math.log10(tau_max), n_decays), persistent=False)
        self.proj = nn.Linear(2 * n_freqs + n_decays, embed_dim, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()

    def basis(self, t: torch.Tensor) -> torch.Tensor:
        """The un-projected features [..., 2 n_freqs + n_decays] at times t [...] (seconds)."""
        t = t.float()[..., None]
        ang = 2 * math.pi * self.freqs.float() * t
        return torch.cat([torch.sin(ang), torch.cos(ang), torch.exp(-t / self.taus.float())], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Encode patch times t [...] in seconds -> [..., D]."""
        return self.proj(self.basis(t).to(self.proj.weight.dtype))
