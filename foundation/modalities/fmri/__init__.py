"""SLIM-Brain (fMRI): nibabel readers, cached preprocessing, saliency windows, Hiera4D, JEPA.

Importing this package is cheap and registers:

* models ``slim-brain`` (:class:`SlimBrain`: Hiera4D context encoder + EMA target + predictor)
  and ``hiera4d`` (:class:`Hiera4D`, the encoder alone);
* dataset ``fmri-windows`` (:class:`FmriWindows`);
* objective ``slim-brain-jepa`` (:class:`JepaObjective`).

nibabel, nilearn's data files and scipy are used inside the functions that need them.
"""
from foundation.modalities.fmri.dataset import FmriWindows, FmriWindowsConfig
from foundation.modalities.fmri.hiera4d import Hiera4D, Hiera4DConfig
from foundation.modalities.fmri.jepa import JepaConfig, JepaObjective
from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig
from foundation.registry import DATASETS, MODELS, OBJECTIVES

__all__ = [
    "FmriWindows", "FmriWindowsConfig", "Hiera4D", "Hiera4DConfig", "JepaConfig", "JepaObjective",
    "SlimBrain", "SlimBrainConfig",
]

MODELS.register("slim-brain", SlimBrain)
MODELS.register("hiera4d", Hiera4D)
DATASETS.register("fmri-windows", FmriWindows)
OBJECTIVES.register("slim-brain-jepa", JepaObjective)
