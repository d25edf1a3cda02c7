"""Random token masks shared by the masked-modelling objectives (DeeperBrain's EEG patches, SLIM-Brain's mask units).

Meaning of the outputs: ``keep`` holds the indices of visible tokens (the encoder sees them), ``drop`` the
indices of deleted tokens (reconstructed or predicted); tokens that are not valid (padded channels,
background mask units) are in neither. Masked tokens are deleted before the encoder, as in MAE
(He et al., "Masked Autoencoders Are Scalable Vision Learners", https://arxiv.org/abs/2111.06377).
"""
from __future__ import annotations

import torch

__all__ = ["sample_keep", "n_visible"]


def n_visible(n_valid: int, mask_ratio: float, keep_one_masked: bool = False) -> int:
    """Visible tokens out of ``n_valid``: ``max(1, round(n_valid * (1 - mask_ratio)))``, at most ``n_valid``.

    With ``keep_one_masked`` at most ``n_valid - 1`` stay visible, so there is always a target (a sample with
    a single valid token then has none visible).
    """
    n_keep = min(max(1, round(n_valid * (1.0 - mask_ratio))), n_valid)
    return max(0, min(n_keep, n_valid - 1)) if keep_one_masked else n_keep


def sample_keep(valid: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None,
                keep_one_masked: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split each sample's valid tokens into visible and deleted ones, uniformly at random.

    One ``torch.randperm(n_valid)`` is drawn per sample on the CPU from ``generator`` (None: torch's global
    RNG, which the engine saves and restores on resume), so a seed gives the same masks on every device.

    Args:
        valid: [B, N] bool, True = a real token that may be kept or deleted.
        mask_ratio: share of each sample's valid tokens to delete, in [0, 1).
        generator: RNG for the draws (None: the global one).
        keep_one_masked: always delete at least one valid token (see :func:`n_visible`).

    Returns:
        ``(keep, drop)``: B sorted 1-D int64 tensors each (on ``valid``'s device), disjoint, together the
        sample's valid token indices.

    Raises:
        ValueError: ``valid`` is not 2-D or ``mask_ratio`` is outside [0, 1) (a programming error: objective
            configs check the ratio).
    """
    if valid.dim() != 2:
        raise ValueError(f"sample_keep: valid must be [B, N] bool, got shape {tuple(valid.shape)}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"sample_keep: mask_ratio must be in [0, 1), got {mask_ratio}")
    keep, drop = [], []
    for row in valid:
        idx = row.nonzero().flatten()  # [n_valid]
        n = idx.numel()
        n_keep = n_visible(n, mask_ratio, keep_one_masked)
        order = idx[torch.randperm(n, generator=generator).to(idx.device)]
        keep.append(order[:n_keep].sort().values)
        drop.append(order[n_keep:].sort().values)
    return keep, drop
