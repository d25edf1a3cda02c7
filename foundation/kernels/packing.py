"""Padded batch <-> packed visible tokens, the layout of the varlen attention kernel.

Masked-patch encoders (MAE, He et al. 2021, "Masked Autoencoders Are Scalable
Vision Learners", https://arxiv.org/abs/2111.06377; Hiera, Ryali et al. 2023,
https://arxiv.org/abs/2306.00989) delete masked tokens before the encoder. When
each sample keeps a different number of tokens, the visible tokens of all
samples are concatenated into one packed buffer [T, D] (T = sum of K_b) and the
sample boundaries are given by ``cu_seqlens`` [B + 1] (int32, cumulative counts
starting at 0). No padding is carried through the encoder.

``keep`` always means *indices of visible tokens* (0 <= index < N); a boolean
mask means True = visible, False = masked (deleted).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from foundation.errors import ConfigError

__all__ = ["PackPlan", "plan_pack", "pack_visible", "unpack", "seqlens_to_cu", "sample_ids", "packed_mean"]


@dataclass(frozen=True)
class PackPlan:
    """Where the visible tokens of a padded batch [B, N, ...] go in the packed buffer, worked out in advance.

    Built by :func:`plan_pack` before a compiled region (the lengths are data-dependent), so that
    :func:`pack_visible` inside it is one gather with no host read.

    Attributes:
        index: [sum K_b] int64, row-major flat index ``b * N + n`` of each packed token, in packing order.
        cu: [B + 1] int32 sample boundaries (``cu_seqlens``).
        max_len: the longest sample's count (host int).
        batch: B. tokens: N.
    """

    index: torch.Tensor
    cu: torch.Tensor
    max_len: int
    batch: int
    tokens: int


def plan_pack(keep: torch.Tensor | Sequence[torch.Tensor], batch: int, tokens: int,
              device: torch.device | str = "cpu") -> PackPlan:
    """The :class:`PackPlan` of ``keep`` over a [batch, tokens, ...] input; same checks and order as
    :func:`pack_visible` (which takes the plan in place of ``keep``).

    Args:
        keep: indices [B, K], a list of B 1-D index tensors, or a boolean mask [B, N] (True = visible).
        batch: B. tokens: N. device: where the plan's tensors go.

    Raises:
        ConfigError: keep has the wrong shape or dtype, an index is out of range or repeated.
    """
    shape = torch.empty(batch, tokens, 0, device="meta")  # only the shape is read by the checks
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and tuple(keep.shape) == (batch, tokens):
        lengths = keep.sum(1).tolist()
        flat = keep.reshape(-1).nonzero_static(size=sum(lengths)).squeeze(1)  # row-major order
    else:
        if _is_index_matrix(keep, batch):
            _check_index_matrix(keep, tokens)
            rows = list(keep.long().unbind(0))
        else:
            rows = _index_lists(shape, keep)
        lengths = [r.numel() for r in rows]
        flat = (torch.cat([r.cpu() + b * tokens for b, r in enumerate(rows)]) if rows
                else torch.empty(0, dtype=torch.long))
    device = torch.device(device)
    return PackPlan(_to_device(flat.long(), device), _cu_from_host(lengths, device), max(lengths, default=0),
                    batch, tokens)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on device; a host tensor goes to a GPU through pinned memory without waiting for the device
    (a plain ``.to("cuda")`` of pageable memory synchronises the stream)."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _cu_from_host(lengths: list[int], device: torch.device) -> torch.Tensor:
    """cu_seqlens [S + 1] int32 built on the host, then copied."""
    return _to_device(torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32), device)


def seqlens_to_cu(seqlens: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence starts from lengths: [S] -> [S + 1] int32 starting at 0."""
    cu = torch.zeros(seqlens.numel() + 1, dtype=torch.int32, device=seqlens.device)
    cu[1:] = torch.cumsum(seqlens.reshape(-1), dim=0)
    return cu


def _is_index_matrix(keep: object, batch: int) -> bool:
    return (
        isinstance(keep, torch.Tensor)
        and keep.dim() == 2
        and keep.shape[0] == batch
        and not (keep.dtype.is_floating_point or keep.dtype == torch.bool or keep.is_complex())
    )


def _check_index_matrix(keep: torch.Tensor, n: int) -> None:
    """Range and uniqueness of a [B, K] index matrix, with one host copy for all rows."""
    if keep.numel() == 0:
        return
    lo, hi = keep.min(dim=1).values, keep.max(dim=1).values
    ordered = keep.sort(dim=1).values
    repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
    out_of_range = (lo < 0) | (hi >= n)
    rows = torch.stack([lo, hi, out_of_range.long(), repeats.long()], dim=1).tolist()  # [B, 4]
    for b, (row_lo, row_hi, bad_range, repeated) in enumerate(rows):
        if bad_range:
            raise ConfigError(
                f"pack_visible: keep[{b}] holds index range [{row_lo}, {row_hi}] but x has N = {n} tokens "
                f"(valid indices 0..{n - 1})"
            )
        if repeated:
            raise ConfigError(f"pack_visible: keep[{b}] repeats a token index; each visible token must appear once")


def _index_lists(x: torch.Tensor, keep: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    B, N = x.shape[:2]
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
        if tuple(keep.shape) != (B, N):
            raise ConfigError(
                f"pack_visible: boolean keep mask must have shape [B, N] = {[B, N]} (True = visible), "
                f"received {list(keep.shape)}"
            )
        return [row.nonzero().flatten() for row in keep]
    if isinstance(keep, torch.Tensor):
        if keep.dim() != 2 or keep.shape[0] != B:
            raise ConfigError(
                f"pack_visible: keep indices must have shape [B, K] with B = {B} (x is {list(x.shape)}), "
                f"received {list(keep.shape)}; pass a list of 1-D index tensors for variable counts"
            )
        rows = list(keep.unbind(0))
    else:
        rows = list(keep)
        if len(rows) != B:
            raise ConfigError(f"pack_visible: keep holds {len(rows)} index tensors but x has batch size B = {B}")
    for b, row in enumerate(rows):
        if not isinstance(row, torch.Tensor) or row.dim() != 1:
            raise ConfigError(f"pack_visible: keep[{b}] must be a 1-D tensor of token indices, received {row!r:.80}")
        if row.dtype.is_floating_point or row.dtype == torch.bool or row.is_complex():
            raise ConfigError(
                f"pack_visible: keep[{b}] must hold integer token indices, received dtype {row.dtype}; "
                "use a boolean [B, N] mask or integer indices"
            )
        if row.numel():
            lo, hi = int(row.min()), int(row.max())
            if lo < 0 or hi >= N:
                raise ConfigError(
                    f"pack_visible: keep[{b}] holds index range [{lo}, {hi}] but x has N = {N} tokens "
                    f"(valid indices 0..{N - 1})"
                )
            if torch.unique(row).numel() != row.numel():
                raise ConfigError(f"pack_visible: keep[{b}] repeats a token index; each visible token must appear once")
    return [row.long() for row in rows]


def pack_visible(
    x: torch.Tensor, keep: torch.Tensor | Sequence[torch.Tensor] | PackPlan
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gather the visible tokens of a padded batch into one packed buffer.

    Args:
        x: tokens [B, N, D] (any trailing shape after N is carried along).
        keep: which tokens are visible, as indices [B, K] (the same count K per
            sample), a list of B 1-D index tensors [K_b] (variable counts), or a
            boolean mask [B, N] (True = visible), or a :class:`PackPlan` from :func:`plan_pack` (then one
            gather: no check, no host read, nothing data-dependent for ``torch.compile``). Indices are kept
            in the order given.

    Returns:
        ``(packed [sum K_b, D], cu_seqlens [B + 1] int32, max_seqlen)``; max_seqlen is a host int, so
        ``varlen_attention`` needs no device read. Host synchronisation: none for index forms whose
        indices live on the host (the usual case, masks drawn on the CPU), one copy of the lengths for a
        boolean mask on the device.

    Raises:
        ConfigError: x is not at least 2-D, keep has the wrong shape or dtype,
            an index is out of range or repeated.
    """
    if x.dim() < 2:
        raise ConfigError(f"pack_visible: x must be [B, N, D], received shape {list(x.shape)}")
    B, N = x.shape[:2]
    if isinstance(keep, PackPlan):
        if (keep.batch, keep.tokens) != (B, N):
            raise ConfigError(f"pack_visible: the PackPlan was made for [B, N] = {[keep.batch, keep.tokens]}, "
                              f"x is {list(x.shape)}; build the plan with plan_pack for this batch")
        packed = x.reshape(B * N, *x.shape[2:]).index_select(0, keep.index)  # [B, N, D] -> [sum K_b, D]
        return packed, keep.cu, keep.max_len
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and tuple(keep.shape) == (B, N):
        lengths = keep.sum(1).tolist()  # the one read of the mask: no device wait when it lives on the host
        total = sum(lengths)
        flat = keep.reshape(-1).nonzero_static(size=total).squeeze(1)  # [sum K_b], row-major order
        packed = x.reshape(B * N, *x.shape[2:]).index_select(0, _to_device(flat, x.device))  # -> [sum K_b, D]
        return packed, _cu_from_host(lengths, x.device), max(lengths, default=0)
    if _is_index_matrix(keep, B):
        _check_index_matrix(keep, N)
        keep = _to_device(keep.long(), x.device)
        K = keep.shape[1]
        packed = x.gather(1, keep.view(B, K, *([1] * (x.dim() - 2))).expand(B, K, *x.shape[2:]))  # [B, K, D]
        cu = torch.arange(B + 1, dtype=torch.int32, device=x.device) * K  # [B + 1]
        return packed.reshape(B * K, *x.shape[2:]), cu, K  # [B, K, D] -> [B*K, D]
    rows = _index_lists(x, keep)
    lengths = [r.numel() for r in rows]  # known on the host: no device read below
    cu = _cu_from_host(lengths, x.device)
    batch_idx = torch.repeat_interleave(
        torch.arange(len(rows), device=x.device), cu[1:] - cu[:-1], output_size=sum(lengths)
    )
    if not rows:
        token_idx = torch.empty(0, dtype=torch.long, device=x.device)
    elif all(r.device == x.device for r in rows):
        token_idx = torch.cat(rows)
    else:  # host indices (the usual case): one copy for all rows
        token_idx = _to_device(torch.cat([r.cpu() for r in rows]), x.device)
    packed = x[batch_idx, token_idx]  # [B, N, D] -> [sum K_b, D]
    return packed, cu, max(lengths, default=0)


def unpack(
    packed: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter packed tokens back into a zero-padded batch.

    Args:
        packed: tokens [T, D] (any trailing shape), T = ``cu_seqlens[-1]``.
        cu_seqlens: sequence starts [B + 1], starting at 0 and non-decreasing.
        max_seqlen: padded length Kmax; defaults to the longest sequence. Must be at
            least the longest sequence.

    Returns:
        ``(padded [B, Kmax, D], mask [B, Kmax])`` where mask is True at real tokens and
        padded positions hold zeros. Token j of sample b is ``padded[b, j]``.

    Raises:
        ConfigError: cu_seqlens malformed or not matching T, or max_seqlen too small.
    """
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ConfigError(f"unpack: cu_seqlens must be 1-D [B + 1], received shape {list(cu_seqlens.shape)}")
    cu = cu_seqlens.to(device=packed.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    if int(cu[0]) != 0 or bool((lengths < 0).any()):
        raise ConfigError(f"unpack: cu_seqlens must start at 0 and never decrease, received {cu_seqlens.tolist()}")
    T = packed.shape[0]
    if int(cu[-1]) != T:
        raise ConfigError(f"unpack: cu_seqlens[-1] = {int(cu[-1])} but packed holds T = {T} tokens; they must match")
    longest = int(lengths.max()) if lengths.numel() else 0
    kmax = longest if max_seqlen is None else int(max_seqlen)
    if kmax < longest:
        raise ConfigError(f"unpack: max_seqlen = {kmax} is shorter than the longest sequence ({longest})")
    B = lengths.numel()
    seg = torch.repeat_interleave(torch.arange(B, device=packed.device), lengths)  # [T]
    pos = torch.arange(T, device=packed.device) - cu[:-1][seg]  # position within its sequence
    padded = packed.new_zeros((B, kmax) + tuple(packed.shape[1:]))
    padded = padded.index_put((seg, pos), packed)  # [T, D] -> [B, Kmax, D]
    mask = torch.zeros(B, kmax, dtype=torch.bool, device=packed.device)
    mask[seg, pos] = True
    return padded, mask


def sample_ids(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Which sample each packed token belongs to: cu_seqlens [B + 1] -> [K] int64 (K = cu_seqlens[-1]).

    Args:
        cu_seqlens: sequence starts [B + 1].
        total: K when the caller knows it (the packed buffer's length): then the output's size is not read
            from the data, which keeps a ``torch.compile``-d caller in one graph (no device read either).
    """
    if total is None:
        total = int(cu_seqlens[-1])
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)  # [K]
    return torch.searchsorted(cu_seqlens[1:].contiguous(), tokens, right=True)  # #ends <= t: t's sample


def packed_mean(tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean over each sample's packed tokens: tokens [K, D], cu_seqlens [B + 1] -> [B, D].

    A sample with no token gets zeros (its sum over an empty set, divided by 1).
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # [B]
    sums = tokens.new_zeros(len(lens), tokens.shape[-1]).index_add_(0, sample_ids(cu_seqlens, tokens.shape[0]), tokens)  # [K, D] -> [B, D]
    return sums / lens.clamp(min=1)[:, None].to(sums.dtype)
