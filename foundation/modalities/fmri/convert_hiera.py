"""Load the official Hiera weights (``hiera-transformer`` package / its .pth checkpoints) into :class:`Hiera4D`.

Hiera (Ryali et al., https://arxiv.org/abs/2306.00989) publishes image (2D) and
video (3D, e.g. ``hiera_base_16x224``: input (16, 224, 224), q_stride (1, 2, 2),
mask unit (1, 8, 8), patch kernel (3, 7, 7) / stride (2, 4, 4)) models. Our
encoder keeps Hiera's parameter names, so conversion is: drop the classifier
(``head.*``), check every remaining key and shape against the encoder, load
strictly. :func:`hiera_config` turns the official constructor's keyword
arguments into a :class:`Hiera4DConfig`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from foundation.errors import CheckpointError
from foundation.modalities.fmri.hiera4d import Hiera4D, Hiera4DConfig

__all__ = ["hiera_config", "convert_hiera_state_dict", "load_hiera_weights", "HIERA_DEFAULTS"]

HIERA_DEFAULTS: dict[str, Any] = {
    "input_size": (224, 224), "in_chans": 3, "embed_dim": 96, "num_heads": 1, "stages": (2, 3, 16, 3),
    "q_pool": 3, "q_stride": (2, 2), "mask_unit_size": (8, 8), "mask_unit_attn": (True, True, False, False),
    "dim_mul": 2.0, "head_mul": 2.0, "patch_kernel": (7, 7), "patch_stride": (4, 4), "patch_padding": (3, 3),
    "mlp_ratio": 4.0, "sep_pos_embed": False,
}
"""The official ``hiera.Hiera`` constructor defaults (hiera-transformer 0.1.4)."""

_IGNORED = ("num_classes", "drop_path_rate", "norm_layer", "head_dropout", "head_init_scale")


def hiera_config(**hiera_kwargs: Any) -> Hiera4DConfig:
    """A :class:`Hiera4DConfig` equal to ``hiera.Hiera(**hiera_kwargs)`` (classifier head aside)."""
    unknown = sorted(set(hiera_kwargs) - set(HIERA_DEFAULTS) - set(_IGNORED))
    if unknown:
        raise CheckpointError(f"hiera_config: unknown Hiera arguments {unknown}; known: {sorted(HIERA_DEFAULTS)}")
    kw = {**HIERA_DEFAULTS, **{k: v for k, v in hiera_kwargs.items() if k in HIERA_DEFAULTS}}
    if "drop_path_rate" in hiera_kwargs:
        kw["drop_path_rate"] = hiera_kwargs["drop_path_rate"]
    return Hiera4DConfig(**kw)


def convert_hiera_state_dict(state: Mapping[str, torch.Tensor], config: Hiera4DConfig) -> dict[str, torch.Tensor]:
    """Map an official Hiera state dict onto :class:`Hiera4D` keys, checking names and shapes.

    Raises:
        CheckpointError: keys missing or unexpected, or shapes that differ (the config does not match the weights).
    """
    if "model" in state and not isinstance(state["model"], torch.Tensor):
        state = state["model"]  # official .pth files wrap the state dict
    ours = Hiera4D(config).state_dict()
    theirs = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [f"{k}: ours {tuple(ours[k].shape)} vs checkpoint {tuple(theirs[k].shape)}"
              for k in sorted(set(ours) & set(theirs)) if ours[k].shape != theirs[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"Hiera weights do not match Hiera4DConfig: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"shape mismatches {shapes[:8]}; build the config with hiera_config(**the model's constructor arguments)"
        )
    return {k: theirs[k].detach().clone() for k in ours}


def load_hiera_weights(source: str | Path | Mapping[str, torch.Tensor], config: Hiera4DConfig) -> Hiera4D:
    """A :class:`Hiera4D` holding official Hiera weights (a state dict or a .pth path, read with weights_only=True)."""
    if isinstance(source, (str, Path)):
        try:
            source = torch.load(str(source), map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{source}: cannot read Hiera weights ({err}); pass an official .pth or a state dict") from err
    model = Hiera4D(config)
    model.load_state_dict(convert_hiera_state_dict(source, config), strict=True)
    return model
