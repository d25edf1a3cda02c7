"""SLIM-Brain (fMRI): nibabel readers, cached preprocessing, saliency windows, Hiera4D, JEPA.

Importing this package is cheap; :mod:`foundation.registry` finds these by name:

* models ``slim-brain`` (:class:`SlimBrain`: Hiera4D context encoder + EMA target + predictor)
  and ``hiera4d`` (:class:`Hiera4D`, the encoder alone);
* dataset ``fmri-windows`` (:class:`FMRIWindows`);
* objective ``slim-brain-jepa`` (:class:`JepaObjective`).

nibabel, nilearn's data files and scipy are used inside the functions that need them.
Downstream evaluation (probes, fine-tuning) lives in
:mod:`foundation.modalities.fmri.downstream` (not imported here: it pulls in scikit-learn).
"""
from foundation.modalities.fmri.cache import FMRICacheBuilder, open_scan
from foundation.modalities.fmri.convert_hiera import hiera_config, load_hiera_weights
from foundation.modalities.fmri.dataset import FMRIWindows, FMRIWindowsConfig
from foundation.modalities.fmri.demo_corpus import make_demo_corpus
from foundation.modalities.fmri.hiera4d import Hiera4D, Hiera4DConfig
from foundation.modalities.fmri.jepa import JepaConfig, JepaObjective
from foundation.modalities.fmri.preprocess import PreprocessConfig, preprocess_scan
from foundation.modalities.fmri.reader import Scan, find_scans, read_scan
from foundation.modalities.fmri.saliency import random_windows, top_k_windows
from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig

__all__ = [
    "FMRIWindows", "FMRIWindowsConfig", "Hiera4D", "Hiera4DConfig", "JepaConfig", "JepaObjective",
    "SlimBrain", "SlimBrainConfig", "Scan", "read_scan", "find_scans", "PreprocessConfig", "preprocess_scan",
    "FMRICacheBuilder", "open_scan", "top_k_windows", "random_windows", "make_demo_corpus",
    "hiera_config", "load_hiera_weights",
]
