"""Attribution methods by name, each from the library the field uses.

=============  ==========================================================================================
``ig``         integrated gradients (captum ``IntegratedGradients``; Sundararajan et al. 2017,
               https://arxiv.org/abs/1703.01365), zero baseline, Gauss-Legendre steps; the convergence
               delta (sum of attributions - (f(x) - f(0))) is returned with it.
``occlusion``  captum ``Occlusion``: f(x) - f(x with a window set to 0), per window (Zeiler & Fergus 2014).
``lrp``        layer-wise relevance propagation with a zennit composite (Bach et al. 2015); ``EpsilonPlusFlat``
               for convolutional networks. The relevance is read at the input of the first layer a rule
               covers (after an elementwise normalisation, which maps relevance one to one).
``gradcam``    pytorch-grad-cam ``GradCAM`` (Selvaraju et al. 2017) on a convolutional layer, upsampled to the
               input; classification targets (``ClassifierOutputTarget``) or segmentation targets
               (``SemanticSegmentationTarget``).
``random``     uniform noise of the input's shape: the baseline every method must beat.
=============  ==========================================================================================

Attention rollout (transformers) is :mod:`foundation.explain.rollout`; relevance patching (components, not
inputs) is :mod:`foundation.explain.relp`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from foundation.errors import ConfigError, did_you_mean

__all__ = [
    "METHODS",
    "attribute",
    "check_method",
    "gradcam",
    "integrated_gradients",
    "lrp",
    "occlusion",
    "random_attribution",
]

METHODS = ("ig", "occlusion", "lrp", "gradcam", "rollout", "random", "relp")
"""Every method name ``foundation explain --method`` takes (``rollout`` and ``relp`` act on the encoder's blocks)."""


def check_method(name: str, allowed: Sequence[str], where: str = "--method") -> str:
    """``name`` when it is one of ``allowed`` for this model.

    Raises:
        ConfigError: unknown, or not applicable to the model (names the valid ones).
    """
    if name not in METHODS:
        raise ConfigError(f"{where}: unknown method {name!r}; {did_you_mean(name, METHODS)}")
    if name not in allowed:
        raise ConfigError(f"{where}: {name!r} does not apply to this model; valid here: {', '.join(allowed)}")
    return name


def integrated_gradients(net: nn.Module, x: torch.Tensor, target: torch.Tensor, n_steps: int = 32,
                         internal_batch_size: int | None = None,
                         baseline: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients from a baseline (default zeros).

    Args:
        net: ``x -> [B, K]``.
        x: input ``[B, ...]``.
        target: output index per sample ``[B]``.
        n_steps: integration steps (captum's Gauss-Legendre rule).
        internal_batch_size: rows per forward inside captum (None: all steps at once).
        baseline: the reference input ``[B, ...]`` (None: zeros). A model that divides its input by its own
            scale (DeeperBrain's window normalisation) is constant along the ray from 0 and jumps at 0, so a
            zero baseline breaks completeness there; give a non-zero reference.

    Returns:
        ``(attributions [B, ...] shaped as x, delta [B])``: delta is sum(attributions) - (f(x) - f(baseline)),
        the completeness error.
    """
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(net)
    base = torch.zeros_like(x) if baseline is None else baseline
    attr, delta = ig.attribute(x, baselines=base, target=target, n_steps=n_steps,
                               internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return attr.detach(), delta.detach()


def occlusion(net: nn.Module, x: torch.Tensor, target: torch.Tensor, window: tuple[int, ...],
              stride: tuple[int, ...] | None = None, batch: int = 64) -> torch.Tensor:
    """captum ``Occlusion`` with a zero fill: ``[B, ...]`` -> ``[B, ...]`` (each element averages the output drops
    of the windows that cover it).

    Args:
        window: window shape over ``x.shape[1:]``.
        stride: window stride (default: the window, no overlap).
        batch: perturbed inputs per forward.
    """
    from captum.attr import Occlusion

    if len(window) != x.dim() - 1:
        raise ConfigError(f"occlusion: window {window} must have one entry per input axis after the batch "
                          f"({x.dim() - 1}, input {list(x.shape)})")
    occ = Occlusion(net)
    return occ.attribute(x, sliding_window_shapes=tuple(window), strides=tuple(stride or window), target=target,
                         baselines=0.0, perturbations_per_eval=batch).detach()


def lrp(net: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: str = "epsilon-plus-flat",
        first_layer: nn.Module | None = None) -> torch.Tensor:
    """LRP relevance with a zennit composite: ``[B, ...]`` -> relevance ``[B, ...]``.

    The output relevance is the target logit (one-hot times output), so for a network that conserves relevance
    (no biases, epsilon -> 0) ``relevance.sum() == f(x)[target]``.

    Args:
        composite: ``epsilon-plus-flat`` (convolutional nets), ``epsilon`` (epsilon rule on every linear and
            convolutional layer) or ``epsilon-plus``.
        first_layer: read the relevance at this module's input (a layer behind an elementwise normalisation);
            None: the relevance zennit hands to ``x``.
    """
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus, EpsilonPlusFlat, LayerMapComposite
    from zennit.rules import Epsilon
    from zennit.types import Convolution, Linear

    comps = {"epsilon-plus-flat": EpsilonPlusFlat, "epsilon-plus": EpsilonPlus,
             "epsilon": lambda: LayerMapComposite([(Linear, Epsilon(1e-6)), (Convolution, Epsilon(1e-6))])}
    if composite not in comps:
        raise ConfigError(f"lrp: unknown composite {composite!r}; {did_you_mean(composite, comps)}")
    seen: list[torch.Tensor] = []
    handle = None
    if first_layer is not None:
        def keep(_m: nn.Module, args: tuple) -> None:
            args[0].retain_grad()
            seen.append(args[0])
        handle = first_layer.register_forward_pre_hook(keep)
    x = x.detach().clone().requires_grad_(True)
    try:
        with Gradient(model=net, composite=comps[composite]()) as attributor:
            _, rel = attributor(x, lambda y: torch.nn.functional.one_hot(target, y.shape[-1]).to(y.dtype) * y)
    finally:
        if handle is not None:
            handle.remove()
    if first_layer is not None:
        if not seen or seen[-1].grad is None:
            raise ConfigError("lrp: the first layer given was not reached by the forward pass")
        rel = seen[-1].grad
    return rel.detach()


def gradcam(net: nn.Module, x: torch.Tensor, layer: nn.Module, targets: Sequence[object]) -> torch.Tensor:
    """pytorch-grad-cam's Grad-CAM of ``layer``: ``[B, C, H, W]`` -> heat maps ``[B, H, W]`` in [0, 1].

    Args:
        layer: a convolutional layer of ``net`` (its output is ``[B, C', h, w]``).
        targets: one pytorch-grad-cam target per sample (``ClassifierOutputTarget(k)``,
            ``SemanticSegmentationTarget(k, mask)``).
    """
    from pytorch_grad_cam import GradCAM

    with GradCAM(model=net, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=list(targets))
    return torch.from_numpy(maps).float()


def random_attribution(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform noise shaped as ``x`` (a fixed seed): the chance baseline."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=gen)


def attribute(method: str, net: nn.Module, x: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    """Dispatch by name to the input-attribution methods (not ``rollout``, which needs the encoder).

    Returns:
        Attributions shaped as ``x`` (Grad-CAM: ``[B, H, W]``).
    """
    if method == "ig":
        return integrated_gradients(net, x, target, **kwargs)[0]
    if method == "occlusion":
        return occlusion(net, x, target, **kwargs)
    if method == "lrp":
        return lrp(net, x, target, **kwargs)
    if method == "gradcam":
        return gradcam(net, x, **kwargs)
    if method == "random":
        return random_attribution(x, **kwargs)
    raise ConfigError(f"attribute: {method!r} is not an input-attribution method; valid: ig, occlusion, lrp, gradcam, "
                      "random")
