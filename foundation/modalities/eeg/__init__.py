"""EEG modality: mne readers, channel geometry, neurodynamics statistics, the DeeperBrain model.

Provides ``deeperbrain`` (model), ``eeg-windows`` (dataset) and ``deeperbrain`` (objective), which
:mod:`foundation.registry` finds by name.
Importing is cheap: mne, scipy filters and the cache load lazily inside functions.
"""
from __future__ import annotations

from foundation.modalities.eeg.dataset import EEGWindows, EEGWindowsConfig
from foundation.modalities.eeg.model import DeeperBrain, DeeperBrainConfig
from foundation.modalities.eeg.objective import DeeperBrainObjective, DeeperBrainObjectiveConfig

__all__ = ["DeeperBrain", "DeeperBrainConfig", "DeeperBrainObjective", "DeeperBrainObjectiveConfig", "EEGWindows",
           "EEGWindowsConfig"]
