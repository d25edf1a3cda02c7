"""Activation sparsity: measure it in any model, and a CHESS-like channel-wise threshold pass for inference.

Measurement (:func:`measure_sparsity`) hooks the outputs of chosen modules (by default every activation layer,
i.e. every module whose class is registered in ``ACTIVATIONS``) and reports per layer

- the share of exact zeros, and
- the share of near-zero activations ``|a| <= r * max|a|`` for relative thresholds r, where ``max|a|`` is the
  layer's largest magnitude over the whole measurement set (a first pass finds it, a second counts). Thresholds
  relative to the layer's max are used rather than percentiles of ``|a|``, because a percentile threshold would
  return its own percentile by construction. This is the threshold-scan view of "PPL-p% sparsity" in
  "ReLU^2 Wins: Discovering Efficient Activation Functions for Sparse LLMs" (Zhang et al., 2024,
  https://arxiv.org/abs/2402.03804), which picks the threshold by the model-quality cost it causes; the cost side
  is :func:`evaluate_channel_thresholds`.

Channel-wise thresholding follows "CHESS: Optimizing LLM Inference via Channel-Wise Thresholding and Selective
Sparsification" (He et al., 2024, https://arxiv.org/abs/2409.01366): on calibration data each channel c of a layer
gets a threshold thr_c such that a ``target`` share of that channel's activations satisfies ``|a| < thr_c``
(thr_c is the ``round(target * M)``-th smallest ``|a|`` of its M calibration values); at inference a forward hook
zeroes ``|a| < thr_c`` (:func:`apply_channel_thresholds`). :func:`evaluate_channel_thresholds` reports what the pass
costs on held-out data: the relative output error against the dense model and, given a metric, the metric drop.

Weight-informed gating follows "WINA: Weight Informed Neuron Activation for Accelerating Large Language Model
Inference" (Chen et al., 2025, https://arxiv.org/abs/2505.19427): for a linear layer ``y = W x`` with
``W [m, n]``, the mask keeps the input entries i whose ``|x_i| * ||W[:, i]||_2`` is among the K largest of the token
(:func:`wina_mask`), and the layer computes ``W (mask * x)``. :func:`apply_wina` does it with forward pre-hooks on
chosen linear layers: the reference (zeroing, no compute saved) for the gather path of
:mod:`foundation.layers.sparse_mlp`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.errors import ConfigError, DataError, did_you_mean
from foundation.layers._batches import ForwardFn, require_reiterable, run_batch
from foundation.layers._shape import along, feature_axis
from foundation.layers.create_act import get_act_layer
from foundation.registry import ACTIVATIONS

__all__ = [
    "LayerSparsity",
    "ThresholdReport",
    "ThresholdHooks",
    "measure_sparsity",
    "calibrate_channel_thresholds",
    "apply_channel_thresholds",
    "evaluate_channel_thresholds",
    "wina_keep_count",
    "wina_mask",
    "apply_wina",
]

Metric = Callable[[torch.Tensor, Any], float]


@dataclass
class LayerSparsity:
    """Sparsity of one layer's outputs over a measurement set.

    Attributes:
        numel: number of activations seen.
        zero_share: share of exact zeros.
        max_abs: largest ``|a|`` seen.
        near_zero_share: relative threshold r -> share of ``|a| <= r * max_abs``.
    """

    numel: int
    zero_share: float
    max_abs: float
    near_zero_share: dict[float, float] = field(default_factory=dict)


@dataclass
class ThresholdReport:
    """What a channel-threshold pass does on held-out data.

    Attributes:
        zero_share: layer -> share of exact zeros in its thresholded outputs.
        dense_zero_share: layer -> share of exact zeros without thresholds.
        overall_zero_share: exact-zero share over all hooked outputs together, thresholded.
        output_rel_error: ``||y_sparse - y_dense|| / ||y_dense||`` over all held-out model outputs (Frobenius).
        metric_dense: the metric without thresholds (sample-weighted mean over batches), or None.
        metric_sparse: the metric with thresholds, or None.
        metric_drop: ``metric_dense - metric_sparse``, or None.
    """

    zero_share: dict[str, float]
    dense_zero_share: dict[str, float]
    overall_zero_share: float
    output_rel_error: float
    metric_dense: float | None = None
    metric_sparse: float | None = None
    metric_drop: float | None = None


def _select(model: nn.Module, modules: Sequence[str] | None, where: str) -> dict[str, nn.Module]:
    """Name -> module for the requested names, or every registered activation layer (not Identity) when None."""
    named = dict(model.named_modules())
    if modules is None:
        act_classes = tuple({get_act_layer(n) for n in ACTIVATIONS.names()} - {nn.Identity})
        chosen = {n: m for n, m in named.items() if n and isinstance(m, act_classes)}
        if not chosen:
            raise ConfigError(f"{where}: {type(model).__name__} holds no registered activation layer; pass "
                              f"modules=[...] with the names of the layers whose outputs to use")
        return chosen
    unknown = [n for n in modules if n not in named]
    if unknown:
        raise ConfigError(f"{where}: no module named {unknown[0]!r} in {type(model).__name__}; "
                          f"{did_you_mean(unknown[0], [n for n in named if n])}")
    return {n: named[n] for n in modules}


def _output_tensor(output: Any, name: str, where: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise DataError(f"{where}: module {name!r} returned {type(output).__name__}, not a tensor; choose modules "
                        f"whose output is one tensor")
    return output


def _run(model: nn.Module, loader: Iterable[Any], hooks: dict[str, Callable[..., Any]], layers: dict[str, nn.Module],
         forward_fn: ForwardFn | None, where: str, outputs: list[tuple[torch.Tensor, Any]] | None = None) -> int:
    """One no-grad eval pass of ``loader`` with forward hooks; restores the mode; returns the number of batches.

    When ``outputs`` is a list, each batch's (model output, batch) pair is appended to it.
    """
    handles = [layers[n].register_forward_hook(h) for n, h in hooks.items()]
    was_training = model.training
    n = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in loader:
                y = run_batch(model, batch, forward_fn, where)
                if outputs is not None:
                    if not isinstance(y, torch.Tensor):
                        raise ConfigError(f"{where}: the model returned {type(y).__name__}; pass a forward_fn that "
                                          f"returns the output tensor to compare")
                    outputs.append((y.detach(), batch))
                n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise DataError(f"{where}: the loader yielded no batch; pass a non-empty iterable of batches")
    return n


def measure_sparsity(model: nn.Module, loader: Iterable[Any], modules: Sequence[str] | None = None,
                     rel_thresholds: Sequence[float] = (1e-3, 1e-2, 5e-2, 1e-1),
                     forward_fn: ForwardFn | None = None) -> dict[str, LayerSparsity]:
    """Measure per-layer activation sparsity with forward hooks (two passes over ``loader``).

    Args:
        model: any module.
        loader: a re-iterable of batches (list or DataLoader; a tensor, or an (input, ...) tuple per batch).
        modules: names (as in ``model.named_modules()``) of the layers whose outputs to measure; None picks every
            registered activation layer.
        rel_thresholds: relative thresholds r in [0, 1]; near-zero means ``|a| <= r * max|a|`` of that layer.
        forward_fn: ``forward_fn(model, batch)`` for other batch formats.

    Returns:
        Layer name -> :class:`LayerSparsity`.

    Raises:
        ConfigError: unknown module name, no activation layer, a one-shot iterator, or r outside [0, 1].
        DataError: an empty loader, a layer never called, or a non-tensor layer output.
    """
    where = "measure_sparsity"
    bad = [r for r in rel_thresholds if not 0.0 <= r <= 1.0]
    if bad:
        raise ConfigError(f"{where}: relative thresholds must lie in [0, 1] (fractions of the layer's max |a|), "
                          f"received {bad}")
    require_reiterable(loader, where)
    layers = _select(model, modules, where)
    numel = dict.fromkeys(layers, 0)
    zeros = dict.fromkeys(layers, 0)
    peak = dict.fromkeys(layers, 0.0)

    def first(name: str) -> Callable[..., None]:
        def _hook(_m: nn.Module, _i: Any, out: Any) -> None:
            a = _output_tensor(out, name, where)
            numel[name] += a.numel()
            zeros[name] += int((a == 0).sum())
            peak[name] = max(peak[name], float(a.abs().max())) if a.numel() else peak[name]
        return _hook

    _run(model, loader, {n: first(n) for n in layers}, layers, forward_fn, where)
    never = sorted(n for n in layers if numel[n] == 0)
    if never:
        raise DataError(f"{where}: layers {never} produced no activation on the data; check the module names")
    near = {n: dict.fromkeys(rel_thresholds, 0) for n in layers}

    def second(name: str) -> Callable[..., None]:
        def _hook(_m: nn.Module, _i: Any, out: Any) -> None:
            a = out.abs()
            for r in rel_thresholds:
                near[name][r] += int((a <= r * peak[name]).sum())
        return _hook

    _run(model, loader, {n: second(n) for n in layers}, layers, forward_fn, where)
    return {
        n: LayerSparsity(numel=numel[n], zero_share=zeros[n] / numel[n], max_abs=peak[n],
                         near_zero_share={r: near[n][r] / numel[n] for r in rel_thresholds})
        for n in layers
    }


def calibrate_channel_thresholds(model: nn.Module, loader: Iterable[Any], target: float,
                                 modules: Sequence[str] | None = None, dim: int = -1,
                                 forward_fn: ForwardFn | None = None) -> dict[str, torch.Tensor]:
    """Per-channel thresholds that zero a ``target`` share of each channel's activations on ``loader``.

    Every calibration activation of the chosen layers is kept (on CPU, float32) to take exact order statistics,
    so size the calibration set to memory: about 4 bytes x tokens x channels per layer.

    Args:
        model: any module.
        loader: calibration batches (a tensor, or an (input, ...) tuple per batch).
        target: share of activations to zero per channel, in (0, 1).
        modules: names of the layers to threshold; None picks every registered activation layer.
        dim: the channel axis of those layers' outputs: -1 for tokens [B, N, C], 1 for maps [B, C, ...].
        forward_fn: ``forward_fn(model, batch)`` for other batch formats.

    Returns:
        Layer name -> thresholds [C] (float32), to pass to :func:`apply_channel_thresholds`.

    Raises:
        ConfigError: ``target`` outside (0, 1), unknown module name or no activation layer.
        DataError: empty loader, a layer never called, or channel counts that change between batches.
    """
    where = "calibrate_channel_thresholds"
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ConfigError(f"{where}: target is the share of activations to zero and must lie in (0, 1), "
                          f"received {target!r}")
    layers = _select(model, modules, where)
    store: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def keep(name: str) -> Callable[..., None]:
        def _hook(_m: nn.Module, _i: Any, out: Any) -> None:
            a = _output_tensor(out, name, where)
            axis = feature_axis(a, dim, store[name][0].shape[1] if store[name] else None, f"{where} ({name})")
            store[name].append(a.detach().abs().movedim(axis, -1).reshape(-1, a.shape[axis]).float().cpu())  # -> [M, C]
        return _hook

    _run(model, loader, {n: keep(n) for n in layers}, layers, forward_fn, where)
    never = sorted(n for n in layers if not store[n])
    if never:
        raise DataError(f"{where}: layers {never} were never called on the calibration data")
    thresholds = {}
    for name, chunks in store.items():
        mags = torch.cat(chunks).sort(dim=0).values  # [M, C], ascending per channel
        m = min(round(target * mags.shape[0]), mags.shape[0] - 1)
        thresholds[name] = mags[m].clone()  # [C]: exactly m values per channel lie strictly below (no ties)
    return thresholds


class ThresholdHooks:
    """The forward hooks of a channel-threshold pass; ``remove()`` them, or use as a context manager."""

    def __init__(self, handles: list[torch.utils.hooks.RemovableHandle]) -> None:
        self._handles = handles

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> ThresholdHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_channel_thresholds(model: nn.Module, thresholds: dict[str, torch.Tensor], dim: int = -1) -> ThresholdHooks:
    """Zero ``|a| < thr_c`` in the outputs of the thresholded layers, with forward hooks.

    Args:
        model: the model the thresholds were calibrated on.
        thresholds: layer name -> thresholds [C], from :func:`calibrate_channel_thresholds`.
        dim: the channel axis of those outputs (as at calibration).

    Returns:
        The hooks; ``with apply_channel_thresholds(model, thr): model(x)`` removes them afterwards.

    Raises:
        ConfigError: a layer name not in ``model`` (checked before any hook is added).
        DataError: at run time, an output whose channel count differs from its thresholds.
    """
    layers = _select(model, list(thresholds), "apply_channel_thresholds")

    def zero_small(name: str) -> Callable[..., torch.Tensor]:
        thr = thresholds[name]

        def _hook(_m: nn.Module, _i: Any, out: Any) -> torch.Tensor:
            a = _output_tensor(out, name, "apply_channel_thresholds")
            axis = feature_axis(a, dim, thr.numel(), f"apply_channel_thresholds ({name})")
            t = along(thr.to(device=a.device, dtype=torch.float32), a, axis)
            return a * (a.abs().float() >= t).to(a.dtype)
        return _hook

    return ThresholdHooks([layers[n].register_forward_hook(zero_small(n)) for n in thresholds])


def evaluate_channel_thresholds(model: nn.Module, thresholds: dict[str, torch.Tensor], loader: Iterable[Any],
                                metric: Metric | None = None, dim: int = -1,
                                forward_fn: ForwardFn | None = None) -> ThresholdReport:
    """Run ``loader`` with and without the threshold pass and report its sparsity and cost.

    Args:
        model: the model.
        thresholds: from :func:`calibrate_channel_thresholds`.
        loader: held-out batches, re-iterable (read twice).
        metric: ``metric(output, batch) -> float``, a per-batch mean (e.g. accuracy); averaged over batches
            weighted by ``output.shape[0]``.
        dim: the channel axis of the thresholded outputs.
        forward_fn: ``forward_fn(model, batch)`` returning the output tensor, for other batch formats.

    Returns:
        A :class:`ThresholdReport`.

    Raises:
        ConfigError: one-shot loader, unknown layer, or a model output that is not a tensor.
        DataError: empty loader, or a loader whose two passes differ in batch count or shapes (shuffling).
    """
    where = "evaluate_channel_thresholds"
    require_reiterable(loader, where)
    layers = _select(model, list(thresholds), where)

    def count(into: dict[str, list[int]], name: str) -> Callable[..., None]:
        def _hook(_m: nn.Module, _i: Any, out: Any) -> None:
            into[name][0] += int((out == 0).sum())
            into[name][1] += out.numel()
        return _hook

    dense_counts = {n: [0, 0] for n in layers}
    sparse_counts = {n: [0, 0] for n in layers}
    dense_out: list[tuple[torch.Tensor, Any]] = []
    sparse_out: list[tuple[torch.Tensor, Any]] = []
    _run(model, loader, {n: count(dense_counts, n) for n in layers}, layers, forward_fn, where, dense_out)
    # registered after the threshold hooks, the counting hooks see the thresholded outputs
    with apply_channel_thresholds(model, thresholds, dim=dim):
        _run(model, loader, {n: count(sparse_counts, n) for n in layers}, layers, forward_fn, where, sparse_out)
    if len(dense_out) != len(sparse_out) or any(d.shape != s.shape for (d, _), (s, _) in zip(dense_out, sparse_out)):
        raise DataError(f"{where}: the loader gave different batches on its two passes; pass a loader without "
                        f"shuffling (a list of batches, or a DataLoader with shuffle=False)")
    diff = sum(float((s.double() - d.double()).square().sum()) for (s, _), (d, _) in zip(sparse_out, dense_out))
    ref = sum(float(d.double().square().sum()) for d, _ in dense_out)
    rel_error = (diff / ref) ** 0.5 if ref > 0 else (0.0 if diff == 0 else float("inf"))
    report = ThresholdReport(
        zero_share={n: z / max(t, 1) for n, (z, t) in sparse_counts.items()},
        dense_zero_share={n: z / max(t, 1) for n, (z, t) in dense_counts.items()},
        overall_zero_share=sum(z for z, _ in sparse_counts.values())
        / max(sum(t for _, t in sparse_counts.values()), 1),
        output_rel_error=rel_error,
    )
    if metric is not None:
        weights = [float(y.shape[0]) for y, _ in dense_out]
        dense_m = sum(w * float(metric(y, b)) for w, (y, b) in zip(weights, dense_out)) / sum(weights)
        sparse_m = sum(w * float(metric(y, b)) for w, (y, b) in zip(weights, sparse_out)) / sum(weights)
        report.metric_dense, report.metric_sparse, report.metric_drop = dense_m, sparse_m, dense_m - sparse_m
    return report


def wina_keep_count(sparsity: float, num_features: int, where: str = "wina") -> int:
    """K, how many of ``num_features`` inputs WINA keeps per token at a ``sparsity`` in [0, 1): ``round((1-s) * n)``,
    at least 1.

    Raises:
        ConfigError: ``sparsity`` outside [0, 1).
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"{where}: sparsity is the share of inputs to skip and must lie in [0, 1), "
                          f"received {sparsity!r}")
    return max(1, round((1.0 - sparsity) * num_features))


def wina_mask(x: torch.Tensor, col_norm: torch.Tensor, keep: int) -> torch.Tensor:
    """WINA's gate: True where ``|x_i| * col_norm_i`` is among the ``keep`` largest of its token.

    Args:
        x: layer inputs [..., n].
        col_norm: ``||W[:, i]||_2`` [n] of the layer's weight ``W [m, n]``.
        keep: K, entries kept per token (1 <= K <= n; ties broken by ``torch.topk``).

    Returns:
        Bool mask [..., n] with exactly K True per token.
    """
    score = x.abs().float() * col_norm.to(device=x.device, dtype=torch.float32)
    if keep >= x.shape[-1]:
        return torch.ones_like(x, dtype=torch.bool)
    idx = score.topk(keep, dim=-1, sorted=False).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)


def apply_wina(model: nn.Module, sparsity: dict[str, float]) -> ThresholdHooks:
    """Zero the inputs that WINA gates off, with forward pre-hooks on linear layers (no compute saved).

    Args:
        model: any module.
        sparsity: name of an ``nn.Linear`` in ``model`` -> share of its input entries to zero per token, in [0, 1).
            The column norms are read from the layer's weight at call time.

    Returns:
        The hooks (``remove()`` them, or use as a context manager).

    Raises:
        ConfigError: an unknown name, a module that is not an ``nn.Linear``, or a sparsity outside [0, 1).
    """
    where = "apply_wina"
    layers = _select(model, list(sparsity), where)
    for name, layer in layers.items():
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"{where}: {name!r} is a {type(layer).__name__}, not an nn.Linear; WINA gates the "
                              f"inputs of linear layers: name one (e.g. 'blocks.0.mlp.fc2')")
        wina_keep_count(sparsity[name], layer.in_features, f"{where} ({name})")

    def gate(name: str) -> Callable[..., tuple[torch.Tensor]]:
        layer = layers[name]
        keep = wina_keep_count(sparsity[name], layer.in_features)

        def _hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[torch.Tensor]:
            x = args[0]
            col_norm = layer.weight.detach().float().norm(dim=0)  # [n]
            return (x * wina_mask(x, col_norm, keep).to(x.dtype),)
        return _hook

    return ThresholdHooks([layers[n].register_forward_pre_hook(gate(n)) for n in sparsity])
