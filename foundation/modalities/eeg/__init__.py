"""EEG modality: mne readers, channel geometry, neurodynamics statistics, the DeeperBrain model.

Registers ``deeperbrain`` (model), ``eeg-windows`` (dataset) and ``deeperbrain`` (objective).
Importing is cheap: mne, scipy filters and the cache load lazily inside functions.
"""
from __future__ import annotations

from foundation.modalities.eeg.dataset import EEGDataConfig, EEGWindows
from foundation.modalities.eeg.model import DeeperBrain, DeeperBrainConfig
from foundation.modalities.eeg.objective import DeeperBrainObjective, DeeperBrainObjectiveConfig, random_keep

__all__ = ["DeeperBrain", "DeeperBrainConfig", "DeeperBrainObjective", "DeeperBrainObjectiveConfig", "EEGDataConfig",
           "EEGWindows", "random_keep"]
