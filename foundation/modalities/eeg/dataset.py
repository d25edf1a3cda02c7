"""``eeg-windows``: the registered dataset of cached EEG windows with variable channel sets.

``EEGWindows.prepare(config)`` (run once per node, see :func:`foundation.data.protocol.prepare_dataset`)
generates the demo corpus when ``source: demo`` and builds the window cache (:mod:`.cache`) unless an
up-to-date one exists; ``EEGWindows(config)`` then reads windows from the memory-mapped arrays. Recordings
with different montages share one batch by padding channels to the corpus maximum: every sample carries
``chan_mask`` (True = real channel) and the model deletes padded channels' patches together with masked
ones, so no padding reaches attention.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from foundation.data.cache import DataCache, ShardMap, check_sources_option
from foundation.data.demo import check_source, is_demo, source_path
from foundation.errors import ConfigError, DataError
from foundation.modalities.eeg.cache import EEGCacheBuilder, rows_of_subjects
from foundation.modalities.eeg.demo_corpus import DemoCorpusConfig, make_demo_corpus
from foundation.modalities.eeg.neurostats import StatsConfig
from foundation.modalities.eeg.preprocess import PreprocessConfig
from foundation.modalities.eeg.reader import find_recordings

__all__ = ["EEGWindowsConfig", "EEGWindows", "CHANNEL_TYPES"]

CHANNEL_TYPES = ("eeg", "eog", "ecg", "emg", "misc", "stim", "resp", "bio", "exci", "syst", "temperature", "gsr")


@dataclass
class EEGWindowsConfig:
    """Where the recordings are, how they are cut and preprocessed, and where the cache goes."""

    source: str = field(default="demo", metadata={"help": "recordings folder / BIDS root / file, or 'demo' to generate the demo corpus"})
    cache_dir: str = field(default="runs/cache/deeperbrain-demo", metadata={"help": "cache folder (relative to the working dir); the demo corpus goes to <cache_dir>-demo"})
    window_seconds: float = field(default=4.0, metadata={"help": "window length in seconds (one patch per second per channel)"})
    labels: tuple[str, ...] = field(default=(), metadata={"help": "annotation names used as classes (empty: unlabelled sliding windows)"})
    subjects: tuple[str, ...] = field(default=(), metadata={"help": "keep only these subjects (empty: all)"})
    montage: str = field(default="", metadata={"help": "MNE template montage name or a montage file (.elc, .sfp, .bvef, .loc ...) for channels without digitisation ('' = 10-05 of the installed MNE)"})
    channel_map: dict[str, str] = field(default_factory=dict, metadata={"help": "rename channels before anything else, e.g. {'EEG Fpz-Cz': 'Fpz'}"})
    channel_types: dict[str, str] = field(default_factory=dict, metadata={"help": "set channel types (misc, eog, ecg, emg, stim ...): such channels are dropped and reported"})
    allow_truncated: bool = field(default=False, metadata={"help": "read the intact part of a recording shorter than its header says (the seconds lost go to the cache report) instead of leaving it out"})
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig, metadata={"help": "preprocessing preset"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={"help": "neurodynamics statistics settings"})
    demo: DemoCorpusConfig = field(default_factory=DemoCorpusConfig, metadata={"help": "demo corpus size (source: demo)"})
    check_sources: str = field(default="auto", metadata={"help": "walk the recordings to check the cache is current: auto (where data.source exists; a node holding only its cache shards trusts the recorded fingerprint), always, never"})

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or abs(self.window_seconds - round(self.window_seconds)) > 1e-9:
            raise ConfigError(f"data.window_seconds must be a positive whole number of seconds (1-s patches), "
                              f"got {self.window_seconds}")
        check_source(self.source)
        check_sources_option(self.check_sources)
        bad = {k: v for k, v in self.channel_types.items() if v not in CHANNEL_TYPES}
        if bad:
            raise ConfigError(f"data.channel_types: unknown type(s) {bad}; valid: {', '.join(CHANNEL_TYPES)}")
        odd = {k: v for k, v in self.channel_map.items() if not isinstance(v, str) or not v.strip()}
        if odd:
            raise ConfigError(f"data.channel_map: {odd}: each value must be a non-empty channel name")


def _cache(config: EEGWindowsConfig) -> DataCache:
    builder = EEGCacheBuilder(config.preprocess, config.stats, config.window_seconds, config.labels,
                              config.montage or None, config.allow_truncated, config.channel_map, config.channel_types)
    return DataCache(config.cache_dir, builder, check_sources=config.check_sources,
                     source_root=source_path(config.source, config.cache_dir))


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

    config_class = EEGWindowsConfig
    collate = staticmethod(torch.utils.data.default_collate)

    @classmethod
    def prepare(cls, config: EEGWindowsConfig) -> dict[str, Any]:
        """Generate the demo corpus (``source: demo``) and build the cache unless it is up to date.

        Returns:
            The cache report (every recording, kept or left out and why).
        """
        if is_demo(config.source):
            make_demo_corpus(source_path(config.source, config.cache_dir), config.demo)
        return _cache(config).prepare(lambda: find_recordings(source_path(config.source, config.cache_dir)))

    def __init__(self, config: EEGWindowsConfig) -> None:
        self.config = config
        self.cache = _cache(config)
        # the index without its per-recording entries (split by shard in caches built since issue 19): a rank
        # reading only its shards never loads the whole corpus's; ``index`` reads them all on first use
        self.head = self.cache.head(lambda: find_recordings(source_path(config.source, config.cache_dir)))
        self.windows = self.cache.array("windows")
        self.positions = self.cache.array("positions")
        self.chan_mask = self.cache.array("chan_mask")
        self.stats = self.cache.array("stats")
        # labels and subjects are read per item from their shards: a rank under train.shard_assignment=rank
        # touches only its own shards (``labels`` and ``subject_ids`` read them all, on first use); the subject
        # filter reads the index's subject runs, no shard
        self._label_rows = self.cache.array("labels")
        self._subject_rows = self.cache.array("subjects")
        self.subjects = list(self.head["subjects"])
        rows = np.arange(len(self._label_rows))
        if config.subjects:
            unknown = sorted(set(config.subjects) - set(self.subjects))
            if unknown:
                raise DataError(f"data.subjects: {unknown} are not in the cache {config.cache_dir}; subjects there: "
                                f"{self.subjects}")
            rows = rows_of_subjects(self.head["subject_runs"], [self.subjects.index(s) for s in config.subjects])
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
            "label": torch.tensor(int(self._label_rows[r])),
            "subject": torch.tensor(int(self._subject_rows[r])),
        }

    @functools.cached_property
    def index(self) -> dict[str, Any]:
        """The whole cache index, every recording's entry included (read on first use)."""
        return self.cache.index()

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """[rows of the cache] int64, every window's class (-1 = unlabelled), read from all shards on first use."""
        return np.asarray(self._label_rows)

    @functools.cached_property
    def subject_ids(self) -> np.ndarray:
        """[rows of the cache] int64, every window's subject (index into ``subjects``), read on first use."""
        return np.asarray(self._subject_rows)

    def shard_map(self) -> ShardMap:
        """Which cache shard each window lives in, and each shard's files (``train.shard_assignment: rank``)."""
        return self.cache.shard_map(self.rows)

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

    def item_labels(self) -> list[int]:
        """Class index of every item, read from the cache's label array (no item is loaded)."""
        return [int(v) for v in self.labels[self.rows]]

    def item_sources(self) -> list[str]:
        """The recording file each window was cut from."""
        owner = np.empty(len(self.labels), np.int64)
        for k, entry in enumerate(self.index["entries"]):
            meta = entry["meta"]
            owner[meta["first_window"]:meta["first_window"] + meta["n_windows"]] = k
        entries = self.index["entries"]
        return [str(entries[int(k)]["source"]) for k in owner[self.rows]]

    def preprocessing(self) -> dict[str, Any]:
        """What a model trained on these windows expects of new recordings (goes into config.json and the card)."""
        pre = self.head["settings"]["preprocess"]
        return {"modality": "eeg", "sfreq_hz": float(self.head["sfreq"]),
                "window_seconds": float(self.head["window_seconds"]), "patch_samples": int(round(self.head["sfreq"])),
                "band_pass_hz": [pre["l_freq"], pre["h_freq"]], "notch_hz": list(pre["notch"]),
                "units": f"volts x {pre['scale']:g}", "scale_from_volts": float(pre["scale"]), "clip": float(pre["clip"]),
                "channels": "any set with 3D electrode positions (montage or digitisation)"}

    @property
    def n_stats(self) -> int:
        """S, statistics per channel."""
        return len(self.head["stat_names"])

    def describe(self) -> str:
        """One paragraph for the model card."""
        idx = self.head
        if "n_recordings" in idx:
            n_rec, n_ch = idx["n_recordings"], idx["channel_counts"]
        else:  # a cache from before the counts were kept in the index
            recordings = [e["meta"] for e in self.index["entries"]]
            n_rec, n_ch = len(recordings), sorted({len(r["channels"]) for r in recordings})
        pre = idx["settings"]["preprocess"]
        src = "the generated demo corpus" if is_demo(self.config.source) else f"recordings under {self.config.source}"
        left = self.cache.report()["n_left_out"]
        return (f"{len(self)} windows of {idx['window_seconds']:g} s at {idx['sfreq']:g} Hz from {n_rec} "
                f"recordings of {len(self.subjects)} subjects ({src}; {left} left out); channel counts {n_ch}; "
                f"band-pass {pre['l_freq']}-{pre['h_freq']} Hz; statistics targets: {', '.join(idx['stat_names'])}.")
