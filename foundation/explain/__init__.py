"""Explanations of what a model learnt: attributions people can look at, checked against known ground truth.

``foundation explain --model M --data D [--method ...] --out DIR`` or :func:`explain`. Methods come from the
field's libraries (captum, zennit, pytorch-grad-cam) plus attention rollout and relevance patching; per-modality
outputs (EEG topomaps and band tables, fMRI NIfTI maps and glass brains, ultrasound overlays), layer activity,
deletion curves. Layer: beside the CLI (it loads models and reads every modality's data).
"""
from foundation.explain.methods import (
           METHODS,
           attribute,
           gradcam,
           integrated_gradients,
           lrp,
           occlusion,
)
from foundation.explain.run import DEFAULT_METHODS, ExplainOptions, explain, modality_of
from foundation.explain.target import InputModel

__all__ = [
           "DEFAULT_METHODS",
           "METHODS",
           "ExplainOptions",
           "InputModel",
           "attribute",
           "explain",
           "gradcam",
           "integrated_gradients",
           "lrp",
           "modality_of",
           "occlusion",
]
