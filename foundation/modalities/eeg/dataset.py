"""``eeg-windows``: the registered dataset of cached EEG windows with variable channel sets.

``EEGWindows.prepare(config)`` (run once, on local rank 0) generates the demo corpus when
``source: demo`` and builds the window cache (:mod:`.cache`) unless an up-to-date one exists;
``EEGWindows(config)`` then reads windows from the memory-mapped arrays. Recordings with
different montages share one batch by padding channels to the corpus maximum: every sample
carries ``chan_mask`` (True = real channel) and the model deletes padded channels' patches
together with masked ones, so no padding reaches attention.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.errors import ConfigError, DataError
from foundation.modalities.eeg.cache import build_cache, cache_fingerprint, load_index
from foundation.modalities.eeg.demo_corpus import DemoCorpusConfig, make_demo_corpus
from foundation.modalities.eeg.neurostats import StatsConfig
from foundation.modalities.eeg.preprocess import PreprocessConfig
from foundation.modalities.eeg.reader import find_recordings

__all__ = ["EEGDataConfig", "EEGWindows"]


@dataclass
class EEGDataConfig:
    """Where the recordings are, how they are cut and preprocessed, and where the cache goes."""

    source: str = field(default="demo", metadata={"help": "recordings folder / BIDS root / file, or 'demo' to generate the demo corpus"})
    cache_dir: str = field(default="runs/cache/deeperbrain-demo", metadata={"help": "cache folder (relative to the working dir)"})
    window_seconds: float = field(default=4.0, metadata={"help": "window length in seconds (one patch per second per channel)"})
    labels: tuple[str, ...] = field(default=(), metadata={"help": "annotation names used as classes (empty: unlabelled sliding windows)"})
    subjects: tuple[str, ...] = field(default=(), metadata={"help": "keep only these subjects (empty: all)"})
    montage: str = field(default="", metadata={"help": "MNE template montage for channels without digitisation ('' = 10-05 of the installed MNE)"})
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig, metadata={"help": "preprocessing preset"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={"help": "neurodynamics statistics settings"})
    demo: DemoCorpusConfig = field(default_factory=DemoCorpusConfig, metadata={"help": "demo corpus size (source: demo)"})

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or abs(self.window_seconds - round(self.window_seconds)) > 1e-9:
            raise ConfigError(f"data.window_seconds must be a positive whole number of seconds (1-s patches), "
                              f"got {self.window_seconds}")
        if not self.source:
            raise ConfigError("data.source is empty; give a recordings folder, a BIDS root, a file or 'demo'")


def _paths(config: EEGDataConfig) -> tuple[list[Path], Path]:
    cache = Path(config.cache_dir)
    if config.source == "demo":
        files = make_demo_corpus(cache.parent / f"{cache.name}-raw", config.demo)
    else:
        files = find_recordings(config.source)
    return files, cache


class EEGWindows(torch.utils.data.Dataset):
    """Cached EEG windows.

    Each item is a dict: ``x`` [C, T] float32 (C = corpus max channels, T = window samples),
    ``pos`` [C, 3] metres, ``chan_mask`` [C] bool (True = real channel), ``stats`` [C, S] z-scored
    statistics of the unmasked window, ``label`` int64 (-1 = unlabelled), ``subject`` int64.

    Args:
        config: the data config; the cache must exist (see :meth:`prepare`).

    Raises:
        DataError: no cache, a stale cache, or no window left after the subject filter.
    """

    config_class = EEGDataConfig

    @classmethod
    def prepare(cls, config: EEGDataConfig) -> dict[str, Any]:
        """Generate the demo corpus (``source: demo``) and build the cache unless it is up to date.

        Returns:
            The cache report (files included, excluded and why).
        """
        files, cache = _paths(config)
        fp = cache_fingerprint(files, config.preprocess, config.stats, config.window_seconds, config.labels)
        index = cache / "index.json"
        if index.exists() and json.loads(index.read_text()).get("fingerprint") == fp:
            return json.loads((cache / "report.json").read_text())
        return build_cache(files, cache, config.preprocess, config.stats, config.window_seconds, config.labels,
                           config.montage or None, fingerprint=fp)

    def __init__(self, config: EEGDataConfig) -> None:
        self.config = config
        cache = Path(config.cache_dir)
        self.index = load_index(cache)
        if self.index["window_seconds"] != config.window_seconds or self.index["label_names"] != list(config.labels):
            raise DataError(f"{cache}: cache was built with window_seconds={self.index['window_seconds']}, labels="
                            f"{self.index['label_names']} but the config asks for {config.window_seconds}, "
                            f"{list(config.labels)}; run EEGWindows.prepare(config) to rebuild it")
        self.windows = np.load(cache / "windows.npy", mmap_mode="r")
        self.positions = np.load(cache / "positions.npy", mmap_mode="r")
        self.chan_mask = np.load(cache / "chan_mask.npy", mmap_mode="r")
        self.stats = np.load(cache / "stats.npy", mmap_mode="r")
        self.labels = np.load(cache / "labels.npy")
        self.subject_ids = np.load(cache / "subjects.npy")
        self.subjects = list(self.index["subjects"])
        rows = np.arange(len(self.labels))
        if config.subjects:
            unknown = sorted(set(config.subjects) - set(self.subjects))
            if unknown:
                raise DataError(f"data.subjects: {unknown} are not in the cache {cache}; subjects there: {self.subjects}")
            keep = [self.subjects.index(s) for s in config.subjects]
            rows = rows[np.isin(self.subject_ids, keep)]
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = int(self.rows[i])
        return {
            "x": torch.from_numpy(np.asarray(self.windows[r], dtype=np.float32)),
            "pos": torch.from_numpy(np.array(self.positions[r])),
            "chan_mask": torch.from_numpy(np.array(self.chan_mask[r])),
            "stats": torch.from_numpy(np.array(self.stats[r])),
            "label": torch.tensor(int(self.labels[r])),
            "subject": torch.tensor(int(self.subject_ids[r])),
        }

    @property
    def num_classes(self) -> int:
        """Classes of ``config.labels`` (0 for unlabelled sliding windows)."""
        return len(self.config.labels)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.labels)

    def groups(self) -> list[str]:
        """Subject of each window, for subject-disjoint splits."""
        return [self.subjects[int(s)] for s in self.subject_ids[self.rows]]

    @property
    def n_stats(self) -> int:
        """S, statistics per channel."""
        return len(self.index["stat_names"])

    def describe(self) -> str:
        """One paragraph for the model card."""
        idx = self.index
        n_ch = sorted({len(r["channels"]) for r in idx["recordings"]})
        src = "the generated demo corpus" if self.config.source == "demo" else f"recordings under {self.config.source}"
        return (f"{len(self)} windows of {idx['window_seconds']:g} s at {idx['sfreq']:g} Hz from {len(idx['recordings'])} "
                f"recordings of {len(self.subjects)} subjects ({src}); channel counts {n_ch}; band-pass "
                f"{idx['preprocess']['l_freq']}-{idx['preprocess']['h_freq']} Hz; statistics targets: "
                f"{', '.join(idx['stat_names'])}.")
