"""Shared EEG test data: a tiny generated corpus, bad files of every kind, a minimal EDF writer."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from foundation.modalities.eeg.dataset import EEGWindowsConfig
from foundation.modalities.eeg.demo_corpus import CLASSES, DemoCorpusConfig
from foundation.modalities.eeg.model import DeeperBrainConfig

TINY_DEMO = DemoCorpusConfig(n_subjects=3, blocks_per_class=1, seed=3)


def tiny_data_config(cache_dir: Path, source: str = "demo") -> EEGWindowsConfig:
    """3 subjects (one per montage layout), one 8-s block per class: 18 windows of 4 s."""
    return EEGWindowsConfig(source=source, cache_dir=str(cache_dir), labels=CLASSES, window_seconds=4.0, demo=TINY_DEMO)


def tiny_model_config(**kw) -> DeeperBrainConfig:
    base = dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    base.update(kw)
    return DeeperBrainConfig(**base)


def write_edf(path: Path, names: list[str], data_uv: np.ndarray, sfreq: int) -> None:
    """A minimal EDF (European Data Format) file: 1-s records of int16 samples, +-3276.7 uV range."""
    C, T = data_uv.shape
    n_rec = T // sfreq
    phys = 3276.7

    def f(s: object, n: int) -> bytes:
        return str(s).ljust(n)[:n].encode("ascii")

    head = f("0", 8) + f("X X X X", 80) + f("Startdate 01-JAN-2020 X X X", 80) + f("01.01.20", 8) + f("00.00.00", 8)
    head += f(256 * (C + 1), 8) + f("", 44) + f(n_rec, 8) + f(1, 8) + f(C, 4)
    fields = [(names, 16), (["AgAgCl electrode"] * C, 80), (["uV"] * C, 8), ([-phys] * C, 8), ([phys] * C, 8),
              ([-32767] * C, 8), ([32767] * C, 8), ([""] * C, 80), ([sfreq] * C, 8), ([""] * C, 32)]
    for values, width in fields:
        head += b"".join(f(v, width) for v in values)
    digital = np.clip(np.round(data_uv[:, : n_rec * sfreq] / phys * 32767), -32767, 32767).astype("<i2")
    records = digital.reshape(C, n_rec, sfreq).transpose(1, 0, 2)  # [C, R, S] -> [R, C, S]
    path.write_bytes(head + records.tobytes())
    assert struct.calcsize("<h") == 2
