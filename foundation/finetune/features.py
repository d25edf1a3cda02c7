"""Frozen features of an encoder over a data loader, computed once (for probes)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from foundation.errors import DataError

__all__ = ["extract_features", "split_batch", "pool_tokens"]


def split_batch(batch: Any, input_key: str = "x", label_key: str = "label") -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` of a batch given as a pair or as a dict with ``input_key`` and ``label_key``.

    A dict batch passes every key but the label on as keyword inputs when ``input_key`` is ``"*"``.
    """
    if isinstance(batch, dict):
        if label_key not in batch:
            raise DataError(f"batch has no {label_key!r} labels (keys: {sorted(batch)}); the probe needs labelled data")
        if input_key == "*":
            return {k: v for k, v in batch.items() if k != label_key}, batch[label_key]
        if input_key not in batch:
            raise DataError(f"batch has no {input_key!r} input (keys: {sorted(batch)})")
        return batch[input_key], batch[label_key]
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DataError(f"expected a (inputs, labels) pair or a dict batch, got {type(batch).__name__}")


def pool_tokens(feats: torch.Tensor, pool: str) -> torch.Tensor:
    """``[B, N, D] -> [B, D]`` by ``"mean"`` or ``"cls"`` (first token); ``[B, D]`` passes through."""
    if feats.ndim == 2:
        return feats
    if feats.ndim != 3:
        raise DataError(f"forward_features returned shape {tuple(feats.shape)}; expected [B, N, D] or [B, D]")
    if pool == "mean":
        return feats.mean(1)
    if pool == "cls":
        return feats[:, 0]
    raise DataError(f"unknown pooling {pool!r}; valid: cls, mean")


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: Iterable, *, pool: str = "mean", device: torch.device | str | None = None,
                     input_key: str = "x", label_key: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder.forward_features`` over ``loader`` in eval mode without gradients.

    Args:
        encoder: a module with ``forward_features(inputs) -> [B, N, D] | [B, D]`` (dict inputs go as keywords).
        loader: batches as ``(inputs, labels)`` or dicts (see :func:`split_batch`).
        pool: token pooling, ``"mean"`` or ``"cls"``.
        device: where to compute (default: the encoder's device).
        input_key, label_key: dict keys of the inputs and labels.

    Returns:
        ``(X [S, D] float32 on CPU, y [S] on CPU)``.
    """
    was_training = encoder.training
    encoder.eval()
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    xs, ys = [], []
    try:
        for batch in loader:
            inputs, labels = split_batch(batch, input_key, label_key)
            if isinstance(inputs, dict):
                feats = encoder.forward_features(**{k: v.to(device) if torch.is_tensor(v) else v
                                                    for k, v in inputs.items()})
            else:
                feats = encoder.forward_features(inputs.to(device))
            xs.append(pool_tokens(feats, pool).float().cpu())
            ys.append(torch.as_tensor(labels).cpu())
    finally:
        encoder.train(was_training)
    if not xs:
        raise DataError("extract_features: the loader yielded no batch")
    return torch.cat(xs), torch.cat(ys)
