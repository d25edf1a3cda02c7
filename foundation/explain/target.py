"""What an explanation explains: one input tensor of a model, the rest of the batch held fixed, scalar outputs.

Attribution libraries (captum, zennit, pytorch-grad-cam) want ``f(x) -> [B, K]`` over a single tensor. A
suite model reads a batch dict (DeeperBrain: ``x [B, C, T]``, ``pos [B, C, 3]``, ``chan_mask [B, C]``;
SLIM-Brain: ``x [B, 1, W, Z, Y, X]``; ultrasound: ``x [B, 3, S, S]``). :class:`InputModel` closes over the
other entries and returns:

- a fine-tune (task model, or an adapter around one): its logits ``[B, num_outputs]``;
- a pretrained encoder: the squared norm of its mean-pooled features ``[B, 1]`` (what the encoder "responds
  to"; there is no class to explain without a head).

Captum expands the batch (integrated gradients stacks ``n_steps`` copies of it); the fixed entries are
repeated to match, in the same order (step-major).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foundation.errors import DataError
from foundation.finetune.features import encode, pool_tokens
from foundation.loading import task_model_of

__all__ = ["InputModel", "encoder_of", "has_head"]


def has_head(model: nn.Module) -> bool:
    """True for a fine-tune (a task head to explain), False for a pretrained encoder."""
    return task_model_of(model) is not None


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder inside a fine-tune (under an adapter too), or the model itself for a pretrained encoder."""
    task = task_model_of(model)
    return task.encoder if task is not None else model


class InputModel(nn.Module):
    """``x -> outputs [B, K]`` of ``model`` with every other batch entry fixed.

    Args:
        model: what :func:`foundation.load` returned (fine-tune or pretrained encoder), in eval mode.
        fixed: the batch entries besides ``x`` (each ``[B0, ...]``); repeated when ``x`` has ``k * B0`` rows.
        key: the batch key of the explained input.
        transform: optional map applied to the explained tensor before the model (e.g. summing band components
            ``[B, nb, C, T] -> [B, C, T]``), so attributions land on the transform's input.
    """

    def __init__(self, model: nn.Module, fixed: dict[str, torch.Tensor] | None = None, key: str = "x",
                 transform: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.fixed = dict(fixed or {})
        self.key = key
        self.transform = transform
        self.head = has_head(model)

    def batch(self, x: torch.Tensor) -> dict[str, Any]:
        """The model's batch dict for ``x`` (fixed entries repeated to ``x``'s batch size)."""
        out: dict[str, Any] = {}
        for k, v in self.fixed.items():
            if torch.is_tensor(v) and v.dim() > 0:
                if x.shape[0] % v.shape[0]:
                    raise DataError(f"explain: input batch {x.shape[0]} is not a multiple of the fixed entry {k!r} "
                                    f"batch {v.shape[0]}")
                v = v.repeat(x.shape[0] // v.shape[0], *([1] * (v.dim() - 1)))
            out[k] = v
        out[self.key] = self.transform(x) if self.transform is not None else x
        return out

    def batch_forward(self, batch: Any) -> torch.Tensor:
        """A whole batch (a dict of entries, or the input tensor) through the model: ``[B, K]`` as :meth:`forward`."""
        if self.head:
            return self.model(batch).float()
        return pool_tokens(encode(self.model, batch), "mean").float().square().sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, ...]`` -> ``[B, K]``: logits of a fine-tune, or ``[B, 1]`` pooled-feature energy of an encoder."""
        return self.batch_forward(self.batch(x))
