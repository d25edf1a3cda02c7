"""Activation sparsity put to use at inference: an MLP wrapper that skips the weights of inactive neurons.

:class:`SparseMlp` wraps a trained :class:`~foundation.layers.mlp.Mlp` (``fc1 -> act -> fc2``, both plain
``nn.Linear``, no hidden norm) and gates its inputs per token with one of two criteria:

* ``chess``: per-channel thresholds on the hidden activations ``a = act(fc1 x)``, as in CHESS (He et al., 2024,
  https://arxiv.org/abs/2409.01366): hidden unit c is inactive for a token when ``|a_c| < thr_c``. Calibrate the
  thresholds with :func:`calibrate_chess` (which runs
  :func:`~foundation.layers.sparsity.calibrate_channel_thresholds` on the MLPs' activation layers).
* ``wina``: weight-informed gating, as in WINA (Chen et al., 2025, https://arxiv.org/abs/2505.19427): of a linear
  layer's input x the entries whose ``|x_i| * ||W[:, i]||_2`` are among the K largest of the token are kept
  (:func:`~foundation.layers.sparsity.wina_mask`). Applied to fc2's input (the hidden activations, ``sparsity``)
  and optionally to fc1's input (the block's features, ``input_sparsity``).

Exact zeros (ReLU, top-k) are always inactive: skipping them changes nothing. What the criteria allow to skip:
the hidden criterion is known only after fc1 ran, so it skips fc2's columns only (at most ``H * D_out`` of the
``D_in * H + H * D_out`` multiply-adds per token); only WINA on fc1's input skips fc1's columns too.

The skipping is a gather path over each weight stored transposed (``W^T [n, m]``, contiguous, so that the weights
of input i are one contiguous row; a copy per wrapped linear layer, refreshed when the weight changes). ``mode``
says how tokens share the gather:

* ``union``: one ``index_select`` of the rows active for any token of the call, then one ``[T, k] @ [k, m]``
  matmul; the entries inactive for a given token are zeroed first, so the result equals the per-token gating
  exactly.
* ``per-token``: ``F.embedding_bag`` sums each token's own active rows weighted by its active inputs: the rows are
  read in place (no copy), the multiply-adds are exactly the active ones.

The wrappers are for inference: no gradient reaches the weights through the gather.

The result equals the hook-zeroing passes of :mod:`foundation.layers.sparsity`
(:func:`~foundation.layers.sparsity.apply_channel_thresholds` on the activation, or
:func:`~foundation.layers.sparsity.apply_wina` on fc1/fc2) up to float summation order. Each wrapper counts the
multiply-adds it skipped (:class:`MacCount`). :func:`apply_to_encoder` swaps every such MLP of a model in place.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ConfigError, DataError, did_you_mean
from foundation.layers._batches import ForwardFn, require_reiterable, run_batch
from foundation.layers.mlp import KANMlp, Mlp
from foundation.layers.sparsity import calibrate_channel_thresholds, wina_keep_count, wina_mask

__all__ = ["CRITERIA", "MODES", "MacCount", "SparseMlp", "SparseMlps", "apply_to_encoder", "calibrate_chess",
           "mlp_names"]

CRITERIA = ("chess", "wina")
MODES = ("union", "per-token")


@dataclass
class MacCount:
    """Multiply-adds of the wrapped MLPs, summed over the calls since the last reset.

    Attributes:
        dense: what the dense MLP does on the same tokens: ``T * (D_in * H + H * D_out)``.
        skipped: those of the inactive inputs, token by token (what a per-token kernel could skip).
        skipped_run: those the gather path did not execute (``union`` executes every row active for any token of
            the call; ``per-token`` exactly the active ones).
    """

    dense: int = 0
    skipped: int = 0
    skipped_run: int = 0

    @property
    def skipped_share(self) -> float:
        """``skipped / dense`` (0 before any call)."""
        return self.skipped / self.dense if self.dense else 0.0

    @property
    def skipped_run_share(self) -> float:
        """``skipped_run / dense`` (0 before any call)."""
        return self.skipped_run / self.dense if self.dense else 0.0

    def __add__(self, other: MacCount) -> MacCount:
        return MacCount(self.dense + other.dense, self.skipped + other.skipped, self.skipped_run + other.skipped_run)


def _gathered_linear(x: torch.Tensor, mask: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
                     mode: str) -> tuple[torch.Tensor, int]:
    """``(x * mask) @ weight_t + bias`` computed on the active rows of ``weight_t`` only.

    Args:
        x: inputs [T, n]. mask: bool [T, n], True = active.
        weight_t: the layer's weight transposed, contiguous [n, m] (row i = input i's weights: a gather of rows
            reads contiguous memory). bias: [m] or None.
        mode: ``union``: one ``index_select`` of the rows active for any token, then ``[T, k] @ [k, m]``;
            ``per-token``: ``F.embedding_bag`` over each token's own active rows, weighted by its active inputs
            (the rows are read in place, never copied).

    Returns:
        ``(y [T, m], executed)``: ``executed`` is the number of input rows multiplied, summed over tokens.
    """
    T = x.shape[0]
    if mode == "union":
        cols = mask.any(dim=0).nonzero().flatten()  # [k]
        xs = x.index_select(1, cols) * mask.index_select(1, cols).to(x.dtype)  # [T, k]
        w = weight_t.index_select(0, cols)  # [k, m]
        y = torch.addmm(bias, xs, w) if bias is not None else xs @ w  # [T, k] @ [k, m] -> [T, m]
        return y, T * cols.numel()
    flat = mask.reshape(-1).nonzero().flatten()  # active (token, input) pairs, token-major
    counts = mask.sum(dim=1)  # [T]
    offsets = torch.zeros(T, dtype=torch.long, device=x.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    n = mask.shape[1]
    y = F.embedding_bag(flat % n, weight_t, offsets, mode="sum", per_sample_weights=x.reshape(-1)[flat])  # [T, m]
    return (y + bias if bias is not None else y), int(counts.sum())


class SparseMlp(nn.Module):
    """A trained :class:`~foundation.layers.mlp.Mlp` that skips the weights of its inactive neurons at inference.

    Args:
        mlp: the MLP to wrap (kept as ``self.mlp``, its parameters shared, not copied).
        criterion: ``chess`` or ``wina``.
        thresholds: ``chess``: per-hidden-channel thresholds [H] (from :func:`calibrate_chess`).
        sparsity: ``wina``: share of the hidden units skipped per token, in [0, 1).
        input_sparsity: ``wina``: share of fc1's inputs skipped per token, in [0, 1) (0: fc1 runs dense).
        mode: ``union`` or ``per-token``.

    Raises:
        ConfigError: an MLP without plain ``nn.Linear`` fc1/fc2 or with a hidden norm, an unknown criterion or
            mode, thresholds of the wrong size or missing, or a sparsity outside [0, 1).
    """

    def __init__(self, mlp: nn.Module, criterion: str, *, thresholds: torch.Tensor | None = None,
                 sparsity: float = 0.0, input_sparsity: float = 0.0, mode: str = "union",
                 where: str = "SparseMlp") -> None:
        super().__init__()
        _check_mlp(mlp, where)
        if criterion not in CRITERIA:
            raise ConfigError(f"{where}: unknown criterion {criterion!r}; {did_you_mean(criterion, CRITERIA)}")
        if mode not in MODES:
            raise ConfigError(f"{where}: unknown mode {mode!r}; {did_you_mean(mode, MODES)}")
        H = mlp.fc1.out_features
        self.mlp, self.criterion, self.mode = mlp, criterion, mode
        self.count = MacCount()
        self.keep_hidden, self.keep_input = H, mlp.fc1.in_features
        if criterion == "chess":
            if thresholds is None or tuple(thresholds.shape) != (H,):
                got = "none" if thresholds is None else list(thresholds.shape)
                raise ConfigError(f"{where}: criterion 'chess' needs thresholds of shape [{H}] (one per hidden "
                                  f"unit), received {got}; calibrate them with calibrate_chess(model, loader, target)")
            if input_sparsity or sparsity:
                raise ConfigError(f"{where}: sparsity / input_sparsity belong to criterion 'wina'; 'chess' takes "
                                  f"calibrated thresholds (the target share is chosen at calibration)")
            self.register_buffer("thresholds", thresholds.detach().float().clone(), persistent=False)
        else:
            if thresholds is not None:
                raise ConfigError(f"{where}: thresholds belong to criterion 'chess'; 'wina' takes sparsity and "
                                  f"input_sparsity (shares of inputs skipped per token)")
            self.keep_hidden = wina_keep_count(sparsity, H, f"{where} sparsity")
            self.keep_input = wina_keep_count(input_sparsity, mlp.fc1.in_features, f"{where} input_sparsity")
        self._cache: dict[str, tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = {}
        self.train(mlp.training)  # the wrapper takes the wrapped MLP's mode

    def _cached(self, layer: nn.Linear, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W^T contiguous [n, m], ||W[:, i]||_2 [n])`` of ``layer``, recomputed when the weight changed in place
        (its version counter moved), was replaced, or moved device or dtype."""
        w = layer.weight
        cached = self._cache.get(key)
        if cached is None or cached[0] is not w or cached[1] != w._version or cached[2].device != w.device \
                or cached[2].dtype != w.dtype:
            d = w.detach()
            self._cache[key] = (w, w._version, d.t().contiguous(), d.float().norm(dim=0))
        return self._cache[key][2], self._cache[key][3]

    def reset(self) -> None:
        """Zero the multiply-add counts."""
        self.count = MacCount()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D_in] -> [..., D_out], the gated MLP; counts the multiply-adds it skipped.

        Raises:
            ConfigError: called in training mode (the gather path is for inference: call ``model.eval()``).
            DataError: the last axis is not D_in.
        """
        mlp = self.mlp
        if self.training:
            raise ConfigError("SparseMlp: the sparse gather path is for inference; call model.eval() first (or "
                              "SparseMlps.remove() to train the dense MLPs)")
        D_in, H, D_out = mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features
        if x.shape[-1] != D_in:
            raise DataError(f"SparseMlp: input's last axis is {x.shape[-1]}, the MLP takes D_in = {D_in}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, D_in)  # [T, D_in]
        T = x2.shape[0]
        skipped = skipped_run = 0
        if self.keep_input < D_in:
            w1t, norm1 = self._cached(mlp.fc1, "fc1")
            m_in = wina_mask(x2, norm1, self.keep_input) & (x2 != 0)
            h, run = _gathered_linear(x2, m_in, w1t, mlp.fc1.bias, self.mode)
            skipped += int((~m_in).sum()) * H
            skipped_run += (T * D_in - run) * H
        else:
            h = mlp.fc1(x2)
        a = mlp.act(h.reshape(*lead, H)).reshape(T, H)  # the activation sees the original layout
        a = mlp.drop1(a)
        w2t, norm2 = self._cached(mlp.fc2, "fc2")
        active = a != 0
        if self.criterion == "chess":
            active &= a.abs().float() >= self.thresholds.to(a.device)
        elif self.keep_hidden < H:
            active &= wina_mask(a, norm2, self.keep_hidden)
        y, run = _gathered_linear(a, active, w2t, mlp.fc2.bias, self.mode)
        skipped += int((~active).sum()) * D_out
        skipped_run += (T * H - run) * D_out
        self.count += MacCount(T * (D_in * H + H * D_out), skipped, skipped_run)
        return mlp.drop2(y).reshape(*lead, D_out)


def _check_mlp(mlp: nn.Module, where: str) -> None:
    if isinstance(mlp, KANMlp):
        raise ConfigError(f"{where}: a KAN MLP (KANMlp) has no fc1 -> activation -> fc2 of linear layers whose "
                          f"columns could be skipped; sparse inference needs model.mlp: mlp")
    if not isinstance(mlp, Mlp):
        raise ConfigError(f"{where}: expected a foundation.layers.mlp.Mlp (fc1 -> act -> fc2), received "
                          f"{type(mlp).__name__}")
    for name in ("fc1", "fc2"):
        if type(getattr(mlp, name)) is not nn.Linear:
            raise ConfigError(f"{where}: {name} is a {type(getattr(mlp, name)).__name__}, not a plain nn.Linear "
                              f"(e.g. a NOBLE branch reads every input); sparse inference needs model.mlp: mlp")
    if not isinstance(mlp.norm, nn.Identity):
        raise ConfigError(f"{where}: the MLP normalises its hidden features ({type(mlp.norm).__name__}), which mixes "
                          f"every unit into every other; sparse inference needs an MLP without norm_layer")


def mlp_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of the MLPs :class:`SparseMlp` can wrap.

    Raises:
        ConfigError: the model holds none, saying what MLPs it holds instead.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, Mlp)]
    if not names:
        kan = [n for n, m in model.named_modules() if isinstance(m, KANMlp)]
        held = f"KAN MLPs at {kan[:3]}" if kan else "no transformer MLP (fc1 -> act -> fc2) at all"
        raise ConfigError(f"sparse inference: {type(model).__name__} holds {held}; sparse inference wraps the "
                          f"suite's Mlp (recipe model.mlp: mlp) of transformer encoders (DeeperBrain, SLIM-Brain)")
    return names


def calibrate_chess(model: nn.Module, loader: Iterable[Any], target: float, modules: Sequence[str] | None = None,
                    forward_fn: ForwardFn | None = None) -> dict[str, torch.Tensor]:
    """CHESS thresholds per MLP: ``target`` share of each hidden channel's calibration activations lie below.

    Args:
        model: the model (its MLPs not yet wrapped).
        loader: calibration batches, re-iterable (see
            :func:`~foundation.layers.sparsity.calibrate_channel_thresholds`).
        target: share per channel in (0, 1).
        modules: MLP names; default: the MLPs (of :func:`mlp_names`) that the forward on the loader's first batch
            runs (one extra forward), e.g. DeeperBrain's encoder blocks and not its decoder under
            ``forward_features``.
        forward_fn: ``forward_fn(model, batch)`` for batch formats other than a tensor or a tuple.

    Returns:
        MLP name -> thresholds [H], for :func:`apply_to_encoder`.

    Raises:
        ConfigError: as :func:`~foundation.layers.sparsity.calibrate_channel_thresholds`, or no MLP ran.
    """
    require_reiterable(loader, "calibrate_chess")
    if modules is None:
        candidates = {n: model.get_submodule(n) for n in mlp_names(model)}
        ran: set[str] = set()
        handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: ran.add(n)) for n, m in candidates.items()]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                run_batch(model, next(iter(loader)), forward_fn, "calibrate_chess")
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        modules = [n for n in candidates if n in ran]
        if not modules:
            raise ConfigError(f"calibrate_chess: the forward ran none of the MLPs {list(candidates)[:4]}; pass a "
                              f"forward_fn that runs the encoder (e.g. lambda m, b: m.forward_features(**b))")
    names = list(modules)
    thr = calibrate_channel_thresholds(model, loader, target, modules=[f"{n}.act" for n in names], dim=-1,
                                       forward_fn=forward_fn)
    return {n: thr[f"{n}.act"] for n in names}


class SparseMlps:
    """The :class:`SparseMlp` wrappers that :func:`apply_to_encoder` put into a model.

    Attributes:
        model: the model. wrappers: MLP name -> its wrapper.
    """

    def __init__(self, model: nn.Module, wrappers: dict[str, SparseMlp]) -> None:
        self.model, self.wrappers = model, wrappers

    def count(self) -> MacCount:
        """Multiply-adds over every wrapper since the last reset."""
        total = MacCount()
        for w in self.wrappers.values():
            total = total + w.count
        return total

    def reset(self) -> None:
        """Zero every wrapper's counts."""
        for w in self.wrappers.values():
            w.reset()

    def remove(self) -> None:
        """Put the dense MLPs back (idempotent)."""
        for name, w in self.wrappers.items():
            _set_module(self.model, name, w.mlp)
        self.wrappers = {}

    def __enter__(self) -> SparseMlps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_to_encoder(model: nn.Module, criterion: str, *, thresholds: dict[str, torch.Tensor] | None = None,
                     sparsity: float = 0.0, input_sparsity: float = 0.0, mode: str = "union",
                     modules: Sequence[str] | None = None) -> SparseMlps:
    """Swap the MLPs of ``model`` for :class:`SparseMlp` wrappers, in place.

    Every suite :class:`~foundation.layers.mlp.Mlp` is wrapped by default: DeeperBrain's encoder and decoder
    blocks, SLIM-Brain's context encoder (Hiera4D), EMA target and JEPA predictor. ``forward_features`` (probes,
    fine-tuning) runs the encoder's only.

    Args:
        model: the trained model, in eval mode when it runs.
        criterion: ``chess`` (needs ``thresholds``) or ``wina`` (``sparsity``, ``input_sparsity``).
        thresholds: MLP name -> thresholds [H], from :func:`calibrate_chess`.
        sparsity, input_sparsity, mode: as for :class:`SparseMlp`.
        modules: the MLP names to wrap; default: those of ``thresholds`` for ``chess`` (the MLPs calibrated), every
            one of :func:`mlp_names` for ``wina``.

    Returns:
        The wrappers (``count()``, ``reset()``, ``remove()``; a context manager that removes them). While they are
        in, the state dict's MLP keys gain a ``.mlp`` level: ``remove()`` before saving the model.

    Raises:
        ConfigError: no wrappable MLP, an unknown or unwrappable module name, thresholds missing for an MLP.
    """
    if modules is None and criterion == "chess" and thresholds:
        modules = list(thresholds)
    names = list(modules) if modules is not None else mlp_names(model)
    known = dict(model.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"apply_to_encoder: no module named {unknown[0]!r} in {type(model).__name__}; "
                          f"{did_you_mean(unknown[0], mlp_names(model))}")
    if criterion == "chess":
        missing = [n for n in names if thresholds is None or n not in thresholds]
        if missing:
            raise ConfigError(f"apply_to_encoder: criterion 'chess' has no thresholds for MLP {missing[0]!r}; pass "
                              f"thresholds=calibrate_chess(model, loader, target) (keys are the MLP names)")
    wrappers = {n: SparseMlp(known[n], criterion, thresholds=thresholds[n] if criterion == "chess" else None,
                             sparsity=sparsity, input_sparsity=input_sparsity, mode=mode,
                             where=f"apply_to_encoder ({n})") for n in names}
    for n, w in wrappers.items():
        _set_module(model, n, w)
    return SparseMlps(model, wrappers)
