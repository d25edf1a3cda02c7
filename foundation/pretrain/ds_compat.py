"""DeepSpeed start-up with 0-dim parameters.

``DeepSpeedEngine._broadcast_model`` sends every parameter as ``p.data.view(torch.uint8)``, which torch refuses for
0-dim tensors ("self.dim() cannot be 0 to view Float as Byte"): a model holding a learnable scalar (CRReLU's
``eps``, ASH's ``z_k``, ProAct's ``lam``) could not start at all, on one rank or many. :func:`scalar_safe_broadcast`
wraps that method for the duration of ``deepspeed.initialize``: 0-dim parameters are viewed as ``[1]`` (same
storage, so the broadcast still writes into them) and viewed back as ``[]`` afterwards, before the optimizer
flattens anything.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["scalar_safe_broadcast"]


@contextmanager
def scalar_safe_broadcast() -> Iterator[None]:
    """While open, DeepSpeed's model broadcast accepts 0-dim parameters (restored on exit)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model

    def _broadcast_model(self) -> None:
        scalars = [p for p in self.module.parameters() if p.dim() == 0]
        for p in scalars:
            p.data = p.data.reshape(1)  # a view: the broadcast fills the parameter's own storage
        try:
            original(self)
        finally:
            for p in scalars:
                p.data = p.data.reshape(())

    DeepSpeedEngine._broadcast_model = _broadcast_model
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model = original
