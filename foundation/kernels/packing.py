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

from collections.abc import Sequence

import torch

from foundation.errors import ConfigError

__all__ = ["pack_visible", "unpack", "seqlens_to_cu", "sample_ids", "packed_mean"]


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
    return [row.to(device=x.device, dtype=torch.long) for row in rows]


def pack_visible(
    x: torch.Tensor, keep: torch.Tensor | Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gather the visible tokens of a padded batch into one packed buffer.

    Args:
        x: tokens [B, N, D] (any trailing shape after N is carried along).
        keep: which tokens are visible, as indices [B, K] (the same count K per
            sample), a list of B 1-D index tensors [K_b] (variable counts), or a
            boolean mask [B, N] (True = visible). Indices are kept in the order given.

    Returns:
        ``(packed [sum K_b, D], cu_seqlens [B + 1] int32, max_seqlen)``.

    Raises:
        ConfigError: x is not at least 2-D, keep has the wrong shape or dtype,
            an index is out of range or repeated.
    """
    if x.dim() < 2:
        raise ConfigError(f"pack_visible: x must be [B, N, D], received shape {list(x.shape)}")
    B, N = x.shape[:2]
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and tuple(keep.shape) == (B, N):
        keep = keep.to(x.device)
        seqlens = keep.sum(1, dtype=torch.int32)
        packed = x[keep]  # [B, N, D] -> [sum K_b, D], row-major (= index order within each sample)
        return packed, seqlens_to_cu(seqlens), int(seqlens.max()) if B else 0
    if _is_index_matrix(keep, B):
        _check_index_matrix(keep, N)
        keep = keep.to(device=x.device, dtype=torch.long)
        K = keep.shape[1]
        packed = x.gather(1, keep.view(B, K, *([1] * (x.dim() - 2))).expand(B, K, *x.shape[2:]))  # [B, K, D]
        seqlens = torch.full((B,), K, dtype=torch.int32, device=x.device)
        return packed.reshape(B * K, *x.shape[2:]), seqlens_to_cu(seqlens), K  # [B, K, D] -> [B*K, D]
    rows = _index_lists(x, keep)
    seqlens = torch.tensor([r.numel() for r in rows], dtype=torch.int32, device=x.device)
    batch_idx = torch.repeat_interleave(torch.arange(len(rows), device=x.device), seqlens.long())
    token_idx = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long, device=x.device)
    packed = x[batch_idx, token_idx]  # [B, N, D] -> [sum K_b, D]
    max_seqlen = int(seqlens.max()) if rows else 0
    return packed, seqlens_to_cu(seqlens), max_seqlen


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


def sample_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Which sample each packed token belongs to: cu_seqlens [B + 1] -> [K] int64 (K = cu_seqlens[-1])."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # [B]
    return torch.repeat_interleave(torch.arange(len(lens), device=cu_seqlens.device), lens)


def packed_mean(tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean over each sample's packed tokens: tokens [K, D], cu_seqlens [B + 1] -> [B, D].

    A sample with no token gets zeros (its sum over an empty set, divided by 1).
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # [B]
    sums = tokens.new_zeros(len(lens), tokens.shape[-1]).index_add_(0, sample_ids(cu_seqlens), tokens)  # [K, D] -> [B, D]
    return sums / lens.clamp(min=1)[:, None].to(sums.dtype)
