"""Published EEG foundation models (LaBraM, CBraMod, EEGPT, BIOT, BENDR) through braindecode's classes.

:mod:`.archs` (architectures and their input contracts), :mod:`.containers` (release files read safely and
renamed), :mod:`.model` (the suite's encoder around a braindecode model), :mod:`.contract` (recordings
mapped onto a checkpoint's channels, rate and units), :mod:`.importer` (``foundation.load`` / ``finetune --from``
of a release file, a braindecode Hub folder or ``arch:NAME``).
"""
from __future__ import annotations

from foundation.modalities.eeg.published.model import BENDR, BIOT, EEGPT, CBraMod, LaBraM, PublishedEEG, PublishedEEGConfig

__all__ = ["BENDR", "BIOT", "EEGPT", "CBraMod", "LaBraM", "PublishedEEG", "PublishedEEGConfig"]
