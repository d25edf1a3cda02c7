"""Encoder inputs from batches, token pooling, and frozen features computed once (for probes).

Fine-tuning calls an encoder in one way everywhere (:func:`encode`): a tensor goes to
``forward_features`` positionally; a dict of batch entries goes by keyword, restricted to the
entries whose key names a parameter of ``forward_features`` (so the signature is the encoder's
declaration of what it reads: DeeperBrain takes ``x``, ``pos``, ``chan_mask``; Hiera4D / SLIM-Brain
and the ultrasound CNN take ``x``). Encoders return tokens ``[B, N, D]``, pooled features ``[B, D]``
or packed visible tokens ``(tokens [K, D], cu_seqlens [B + 1])``; :func:`pool_tokens` reduces all
three to ``[B, D]``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from foundation.errors import DataError
from foundation.kernels.packing import packed_mean
from foundation.data.batch import to_device

__all__ = ["extract_features", "split_batch", "pool_tokens", "encode", "feature_kwargs"]


def split_batch(batch: Any, input_key: str = "*", label_key: str = "label") -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` of a batch given as a pair or as a dict with ``input_key`` and ``label_key``.

    Args:
        batch: ``(inputs, labels)`` or a dict of batch entries.
        input_key: dict key of the single input tensor, or ``"*"``: every entry but the label, as a dict
            (:func:`encode` then passes the entries the encoder's ``forward_features`` names).
        label_key: dict key of the labels.
    """
    if isinstance(batch, dict):
        if label_key not in batch:
            raise DataError(f"batch has no {label_key!r} labels (keys: {sorted(batch)}); the probe needs labelled data")
        if input_key == "*":
            return {k: v for k, v in batch.items() if k != label_key}, batch[label_key]
        if input_key not in batch:
            raise DataError(f"batch has no {input_key!r} input (keys: {sorted(batch)}); set objective.input_key "
                            "to one of them, or to '*' to pass every entry forward_features names")
        return batch[input_key], batch[label_key]
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DataError(f"expected a (inputs, labels) pair or a dict batch, got {type(batch).__name__}")


def feature_kwargs(fn: Callable[..., Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``inputs`` whose key names a parameter of ``fn`` (``fn``'s other entries keep defaults).

    Raises:
        DataError: a parameter of ``fn`` without a default is missing from ``inputs`` (names it and the keys).
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(inputs)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in inputs]
    if missing:
        raise DataError(f"{getattr(fn, '__qualname__', fn)} needs {missing} but the batch has only {sorted(inputs)}; "
                        "use a data set whose items carry these keys")
    return {k: v for k, v in inputs.items() if k in params}


def encode(encoder: nn.Module, inputs: Any, device: torch.device | None = None) -> Any:
    """``encoder.forward_features`` of a tensor (positional) or of a dict of batch entries (by keyword).

    Args:
        encoder: a module with ``forward_features``.
        inputs: ``[B, ...]`` tensor, or a dict of batch entries (see :func:`feature_kwargs`).
        device: move tensors there first (None: leave them).

    Returns:
        Whatever ``forward_features`` returns: ``[B, N, D]``, ``[B, D]`` or ``(tokens [K, D], cu_seqlens [B + 1])``.
    """
    if device is not None:
        inputs = to_device(inputs, device)
    if isinstance(inputs, dict):
        return encoder.forward_features(**feature_kwargs(encoder.forward_features, inputs))
    return encoder.forward_features(inputs)


def pool_tokens(feats: Any, pool: str) -> torch.Tensor:
    """``[B, N, D]``, ``[B, D]`` or packed ``(tokens [K, D], cu_seqlens [B + 1])`` -> ``[B, D]``.

    ``"mean"`` averages each sample's tokens, ``"cls"`` takes its first token; ``[B, D]`` passes through.
    Packed tokens are sample b's ``tokens[cu_seqlens[b]:cu_seqlens[b + 1]]`` (varlen layout).
    """
    if pool not in ("mean", "cls"):
        raise DataError(f"unknown pooling {pool!r}; valid: cls, mean")
    if isinstance(feats, (tuple, list)) and len(feats) == 2:
        tokens, cu = feats
        if pool == "cls":
            return tokens[cu[:-1].long()]  # [K, D] -> [B, D]
        return packed_mean(tokens, cu)  # [K, D] -> [B, D]
    if not torch.is_tensor(feats) or feats.ndim not in (2, 3):
        shape = tuple(feats.shape) if torch.is_tensor(feats) else type(feats).__name__
        raise DataError(f"forward_features returned {shape}; expected [B, N, D], [B, D] or (tokens [K, D], "
                        "cu_seqlens [B + 1])")
    if feats.ndim == 2:
        return feats
    return feats.mean(1) if pool == "mean" else feats[:, 0]


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: Iterable, *, pool: str = "mean", device: torch.device | str | None = None,
                     input_key: str = "*", label_key: str = "label", progress: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder.forward_features`` over ``loader`` in eval mode without gradients.

    Args:
        encoder: a module with ``forward_features`` (called through :func:`encode`).
        loader: batches as ``(inputs, labels)`` or dicts (see :func:`split_batch`).
        pool: token pooling, ``"mean"`` or ``"cls"`` (see :func:`pool_tokens`).
        device: where to compute (default: the encoder's device).
        input_key, label_key: dict keys of the inputs and labels.
        progress: when set, a line ``<progress>: batch i/N`` on stderr as batches finish (rank 0 only).

    Returns:
        ``(X [S, D] float32 on CPU, y [S] on CPU)``.
    """
    import os
    import sys
    import time

    show = bool(progress) and os.environ.get("RANK", "0") == "0"
    total = len(loader) if hasattr(loader, "__len__") else None
    last = 0.0
    was_training = encoder.training
    encoder.eval()
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    xs, ys = [], []
    try:
        for batch in loader:
            inputs, labels = split_batch(batch, input_key, label_key)
            xs.append(pool_tokens(encode(encoder, inputs, device), pool).float().cpu())
            ys.append(torch.as_tensor(labels).cpu())
            if show and (time.monotonic() - last > 2.0 or len(xs) == total):
                last = time.monotonic()
                print(f"{progress}: batch {len(xs)}/{total or '?'}", file=sys.stderr, flush=True)
    finally:
        encoder.train(was_training)
    if not xs:
        raise DataError("extract_features: the loader yielded no batch")
    return torch.cat(xs), torch.cat(ys)
