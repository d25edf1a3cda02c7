"""ProAct / HyReLU: the hybrid clipped activation and its calibration from data.

Paper: "ProAct: Progressive Training for Hybrid Clipped Activation Function to Enhance Resilience of DNNs"
(Mousavi, Ahmadilivani, Raik, Jenihhin, Daneshtalab, 2024), https://arxiv.org/abs/2406.06313.

The layer replaces a ReLU and bounds its output so that a hardware fault (a flipped high bit) cannot propagate a huge
value: anything above the threshold ``lam`` is zeroed, not saturated. ReLU is applied first in both forms:

    training (smooth):   y = relu(x) * sigmoid(-k * (x - lam))       k = 20 by default
    eval (deployment):   y = x if 0 <= x <= lam else 0

The smooth form's gradient is written out by hand, so that only ``x`` (and ``lam``) is saved for backward, with
``s = sigmoid(-k (x - lam))``:

    dy/dx = 1[x > 0] * s * (1 - k * x * (1 - s)),    dy/dlam = relu(x) * k * s * (1 - s)

``lam`` is a learnable parameter, one per layer (a scalar) or one per neuron (a vector along the feature axis
``dim``); the paper uses per-layer thresholds everywhere except the last layer, which is per neuron ("hybrid").
:func:`calibrate` initialises every ProAct of a model from the largest input it sees on data. Before calibration
``lam`` holds ``lam_init`` (6.0, ours, unverified). The paper then trains the thresholds progressively layer by
layer with knowledge distillation; that training loop is not part of this module.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

from foundation.errors import ConfigError, DataError
from foundation.layers._batches import ForwardFn, run_batch
from foundation.layers._shape import along, feature_axis, require_num_features
from foundation.layers.compiled_core import CompiledCore

__all__ = ["ProAct", "calibrate"]


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (a scalar, or a per-feature vector viewed with :func:`along`)."""
    return grad.sum_to_size(shape) if grad.shape != shape else grad


# sigmoid(z) rounds to exactly 1 in float32 and float64 from z = 80 on (exp(-80) = 1.8e-35, below half an ulp of
# 1), so clamping z there changes no value; it keeps exp(-z) out of the subnormal range (z > 87 in float32), where
# the CPU's arithmetic is several times slower: ProAct's argument k (lam - x) = 20 (6 - x) passes 87 for x < 1.65,
# i.e. for most entries (compiled forward 1.0 ms -> 0.3 ms on [16, 128, 512], one thread; GELU 0.35 ms).
_Z_MAX = 80.0


class _SmoothClipFn(torch.autograd.Function):
    """``relu(x) * sigmoid(-k (x - lam))`` saving only ``x`` and ``lam`` (``lam`` broadcast against ``x``).

    Few elementwise passes: ``-k (x - lam)`` is one ``add`` with the constant ``k lam`` folded, and as the sigmoid
    is positive ``relu(x) s = relu(x s)`` (in place on the one new tensor). Backward, with ``s (1 - s)`` from one
    ``addcmul`` and ``m = dL/dy 1[x > 0]``: ``dL/dx = m s - k m x s (1 - s)``, ``dL/dlam = k sum(m x s (1 - s))``.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, lam: torch.Tensor,
                k: float) -> torch.Tensor:
        ctx.save_for_backward(x, lam)
        ctx.k = k
        s = torch.add(lam * k, x, alpha=-k).clamp_(max=_Z_MAX).sigmoid_()  # sigmoid(-k (x - lam)), one allocation
        return s.mul_(x).relu_()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, lam = ctx.saved_tensors
        k = ctx.k
        s = torch.add(lam * k, x, alpha=-k).clamp_(max=_Z_MAX).sigmoid_()
        m = grad.masked_fill(x <= 0, 0)  # dL/dy where x > 0
        mxt = torch.addcmul(s, s, s, value=-1).mul_(m).mul_(x)  # m x s (1 - s)
        grad_lam = _sum_to(mxt * k, lam.shape) if ctx.needs_input_grad[1] else None
        grad_x = s.mul_(m).add_(mxt, alpha=-k)
        return grad_x, grad_lam, None


def _proact(x: torch.Tensor, lam: torch.Tensor, k: float, training: bool) -> torch.Tensor:
    """The smooth clip in training, ``x * 1[0 <= x <= lam]`` in eval mode; ``lam`` broadcasts against ``x``."""
    if training:
        return _SmoothClipFn.apply(x, lam, k)
    return x * ((x >= 0) & (x <= lam)).to(x.dtype)


_CORE = CompiledCore(_proact)


class ProAct(nn.Module):
    """Hybrid clipped ReLU: smooth clip in training, hard clip ``x * 1[0 <= x <= lam]`` in eval mode.

    Args:
        num_features: size C of the feature axis; required when ``per_neuron`` is True (``make_activation`` passes
            it), otherwise only checked against the input when given.
        per_neuron: one threshold per feature (True) or one per layer (False).
        k: steepness of the smooth clip in training (20).
        lam_init: threshold before calibration (6.0, unverified).
        dim: the feature axis: -1 for tokens [B, N, C], 1 for feature maps [B, C, ...] (per-neuron only).
        fused: run the layer's functional core through ``torch.compile`` (compiled once per process, see
            :mod:`foundation.layers.compiled_core`); same numbers, fewer passes over memory in eager mode.
        device: device of the parameter.
        dtype: dtype of the parameter.

    Raises:
        ConfigError: ``per_neuron`` without ``num_features``, or ``k`` / ``lam_init`` not positive.
    """

    def __init__(self, num_features: int | None = None, per_neuron: bool = False, k: float = 20.0,
                 lam_init: float = 6.0, dim: int = -1, fused: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fused = fused
        if per_neuron:
            require_num_features(num_features, "ProAct")
        if not k > 0 or not lam_init > 0:
            raise ConfigError(f"ProAct: k and lam_init must be positive, received k={k}, lam_init={lam_init}")
        self.num_features = num_features
        self.per_neuron = per_neuron
        self.k = float(k)
        self.lam_init = float(lam_init)
        self.dim = dim
        shape = (num_features,) if per_neuron else ()
        self.lam = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set every threshold to ``lam_init``."""
        nn.init.constant_(self.lam, self.lam_init)

    def _lam(self, x: torch.Tensor) -> torch.Tensor:
        axis = feature_axis(x, self.dim, self.num_features, "ProAct") if (self.per_neuron or self.num_features) else 0
        lam = self.lam.to(x.dtype)
        return along(lam, x, axis) if self.per_neuron else lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the clipped activation (smooth in training mode, hard in eval mode).

        Args:
            x: input [..., C] (or [B, C, ...] with ``dim=1``); any shape for a per-layer threshold.

        Returns:
            Output of the same shape, in [0, lam] in eval mode.
        """
        return (_CORE if self.fused else _CORE.fn)(x, self._lam(x), self.k, self.training)

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, per_neuron={self.per_neuron}, k={self.k}, dim={self.dim}, "
                f"fused={self.fused}")


@torch.no_grad()
def calibrate(model: nn.Module, loader: Iterable[Any], per_neuron: bool | Literal["last"] | None = None,
              forward_fn: ForwardFn | None = None) -> dict[str, torch.Tensor]:
    """Set the threshold of every :class:`ProAct` in ``model`` to the largest input it sees on ``loader``.

    The model runs in eval mode without gradients; during the pass every ProAct acts as a plain ReLU (a forward hook
    replaces its output), so an uncalibrated threshold upstream cannot clip what later layers see. A threshold is
    set to ``max(largest input, 0)`` (a neuron never positive outputs 0 under any threshold >= 0). Nothing is written
    unless the whole pass succeeds; the model's train/eval mode is restored.

    Args:
        model: any module containing ProAct layers.
        loader: an iterable of batches (a tensor, or a tuple whose first element is the input).
        per_neuron: granularity: None keeps each layer's own; True / False sets it for every ProAct; ``"last"`` is
            the paper's hybrid: per neuron for the last ProAct (in ``model.modules()`` order), per layer elsewhere.
            A layer whose granularity changes gets a new ``lam`` parameter (build the optimizer afterwards).
        forward_fn: ``forward_fn(model, batch)`` runs one batch, for other batch formats.

    Returns:
        The new thresholds, keyed by module name: a scalar (per layer) or a [C] vector (per neuron).

    Raises:
        ConfigError: no ProAct in ``model``, or a bad ``per_neuron`` value.
        DataError: ``loader`` yields no batch, or a ProAct is never called.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ProAct)}
    if not layers:
        raise ConfigError(f"calibrate: {type(model).__name__} contains no ProAct module; build it with "
                          f"activation='proact' or insert ProAct layers first")
    if per_neuron not in (None, True, False, "last"):
        raise ConfigError(f"calibrate: per_neuron must be None, True, False or 'last', received {per_neuron!r}")
    last = list(layers)[-1]

    def _granularity(name: str, module: ProAct) -> bool:
        if per_neuron is None:
            return module.per_neuron
        if per_neuron == "last":
            return name == last
        return bool(per_neuron)

    want = {name: _granularity(name, m) for name, m in layers.items()}
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]:
        def _record(module: ProAct, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            x = inputs[0].detach()
            if want[name]:
                axis = feature_axis(x, module.dim, module.num_features, "ProAct")
                peak = x.movedim(axis, -1).reshape(-1, x.shape[axis]).amax(dim=0).float()  # [..., C] -> [C]
            else:
                peak = x.amax().float()
            seen[name] = peak if name not in seen else torch.maximum(seen[name], peak)
            return torch.relu(inputs[0])
        return _record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    n_batches = 0
    try:
        model.eval()
        for batch in loader:
            run_batch(model, batch, forward_fn, "calibrate")
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise DataError("calibrate: the loader yielded no batch; pass a non-empty iterable of calibration batches")
    missing = sorted(set(layers) - set(seen))
    if missing:
        raise DataError(f"calibrate: ProAct layers {missing} were never called on the calibration data; check that "
                        f"the forward pass reaches them (or pass forward_fn)")
    out: dict[str, torch.Tensor] = {}
    for name, m in layers.items():
        lam = seen[name].clamp_min(0.0)
        if want[name] != m.per_neuron:
            m.per_neuron = want[name]
            m.num_features = int(lam.numel()) if want[name] else m.num_features
            m.lam = nn.Parameter(torch.empty(lam.shape, device=m.lam.device, dtype=m.lam.dtype))
        m.lam.copy_(lam.to(m.lam.dtype))
        out[name] = m.lam.detach().clone()
    return out
