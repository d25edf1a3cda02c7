"""A generated multi-subject EEG corpus with a known labelled task (no data ships in any package).

Each subject gets a real montage (MNE's 10-05 template positions) drawn from three layouts
that differ in channel count and naming: 19 channels in TUH style (``EEG FP1-REF``, old names
T3-T6), 32 channels of the 10-10 system, and 24 channels with digitised (jittered) positions.
Every recording is an ``mne.io.RawArray`` saved as FIF in a BIDS-like tree
(``sub-XX/ses-01/eeg/sub-XX_ses-01_task-demo_eeg.fif``) and carries:

- background: 1/f (pink) noise per channel, a subject-specific posterior alpha rhythm;
- artefacts: eye blinks on frontal channels, muscle bursts on temporal channels, an EOG channel
  (dropped by the reader), one flat and one very noisy channel in some subjects;
- a labelled task in 8-s blocks annotated ``rest`` / ``motor`` / ``memory`` whose classes differ in
  band power over known regions: rest = strong occipital alpha (around Oz); motor = alpha suppressed
  and beta (18-24 Hz) raised over the central strip (C3, C4); memory = frontal-midline theta (around
  Fz) with gamma bursts locked to the theta phase (phase-amplitude coupling).

Source strength falls with 3D distance from the source electrode (exp(-d / 4 cm)), so the
same task shows on every montage. Subjects differ in amplitude, alpha frequency and sampling rate.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.data.demo import make_once
from foundation.errors import ConfigError
from foundation.modalities.eeg.channels import template_positions

__all__ = ["DemoCorpusConfig", "CLASSES", "LAYOUTS", "make_demo_corpus", "make_recording"]

CLASSES = ("rest", "motor", "memory")
_TEN_TWENTY = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T3", "C3", "Cz", "C4", "T4", "T5", "P3", "Pz", "P4", "T6", "O1", "O2"]
LAYOUTS: dict[str, list[str]] = {
    "tuh19": [f"EEG {n.upper()}-REF" for n in _TEN_TWENTY],
    "tenten32": ["Fp1", "Fp2", "AF3", "AF4", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz",
                 "C4", "T8", "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO3", "PO4", "O1", "Oz", "O2"],
    "digitised24": ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC1", "FC2", "T7", "C3", "Cz", "C4", "T8", "CP1", "CP2",
                    "P7", "P3", "Pz", "P4", "P8", "O1", "Oz", "O2"],
}
_OLD = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}


@dataclass
class DemoCorpusConfig:
    """Size and difficulty of the generated corpus."""

    n_subjects: int = field(default=12, metadata={"help": "subjects (one recording each)"})
    blocks_per_class: int = field(default=6, metadata={"help": "8-s task blocks per class per subject"})
    noise_uv: float = field(default=12.0, metadata={"help": "1/f background amplitude (std, uV)"})
    effect: float = field(default=1.0, metadata={"help": "scale of the class effects (smaller = harder task)"})
    seed: int = field(default=0, metadata={"help": "seed of the whole corpus"})

    def __post_init__(self) -> None:
        if self.n_subjects < 2 or self.blocks_per_class < 1 or self.noise_uv <= 0 or self.effect < 0:
            raise ConfigError(f"demo: need n_subjects >= 2, blocks_per_class >= 1, noise_uv > 0, effect >= 0; got {self}")


def _pink(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-std 1/f noise along the last axis (FFT shaping of white noise)."""
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    f = np.arange(spec.shape[-1], dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n=shape[-1], axis=-1)
    return x / x.std(axis=-1, keepdims=True)


def _burst(rng: np.random.Generator, n: int, sf: float, lo: float, hi: float) -> np.ndarray:
    """A narrow-band oscillation with slowly varying amplitude and frequency in [lo, hi] Hz."""
    t = np.arange(n) / sf
    freq = rng.uniform(lo, hi) + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(freq) / sf + rng.uniform(0, 2 * np.pi)
    env = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3))
    return env * np.sin(phase)


def make_recording(layout: str, rng: np.random.Generator, cfg: DemoCorpusConfig, sfreq: float,
                   bad_channels: bool) -> tuple[object, list[tuple[float, float, str]]]:
    """One subject's recording as an ``mne.io.RawArray`` (volts) with task annotations.

    Returns:
        ``(raw, blocks)`` with blocks ``[(onset_s, duration_s, class_name), ...]``.
    """
    import mne

    table = template_positions()
    names = LAYOUTS[layout]
    canon = [_OLD.get(n.replace("EEG ", "").replace("-REF", "").upper(), n.replace("EEG ", "").replace("-REF", "")) for n in names]
    pos = np.stack([table[c.upper()][1] for c in canon])  # [C, 3] metres
    block_s = 8.0
    order = rng.permutation(np.repeat(np.arange(len(CLASSES)), cfg.blocks_per_class))
    n_block = int(block_s * sfreq)
    n = n_block * len(order)
    C = len(names)
    amp = rng.uniform(0.7, 1.4)  # subject gain
    alpha_f = rng.uniform(8.5, 11.5)

    def weight(src: str) -> np.ndarray:
        return np.exp(-np.linalg.norm(pos - table[src.upper()][1], axis=1) / 0.04)  # [C]

    w_occ, w_cen, w_fro = weight("Oz"), np.maximum(weight("C3"), weight("C4")), weight("Fz")
    x = cfg.noise_uv * _pink(rng, (C, n))
    x += 4.0 * w_occ[:, None] * _burst(rng, n, sfreq, alpha_f - 0.5, alpha_f + 0.5)  # resting alpha, all classes
    e = cfg.effect
    blocks = []
    for b, k in enumerate(order):
        sl = slice(b * n_block, (b + 1) * n_block)
        if CLASSES[k] == "rest":
            x[:, sl] += e * 14.0 * w_occ[:, None] * _burst(rng, n_block, sfreq, alpha_f - 0.5, alpha_f + 0.5)
        elif CLASSES[k] == "motor":
            x[:, sl] += e * 7.0 * w_cen[:, None] * _burst(rng, n_block, sfreq, 18.0, 24.0)
        else:
            theta = _burst(rng, n_block, sfreq, 5.0, 7.0)
            gamma = (1 + theta) * np.sin(2 * np.pi * rng.uniform(40, 50) * np.arange(n_block) / sfreq)
            x[:, sl] += e * w_fro[:, None] * (10.0 * theta + 3.0 * gamma)
        blocks.append((b * block_s, block_s, CLASSES[k]))
    frontal = np.maximum(weight("Fp1"), weight("Fp2"))
    for onset in rng.uniform(0, n / sfreq - 1, size=int(n / sfreq / 6)):  # blinks every ~6 s
        i = int(onset * sfreq)
        t = np.arange(int(0.4 * sfreq)) / sfreq
        x[:, i:i + t.size] += 80.0 * frontal[:, None] * np.sin(np.pi * t / 0.4)[None, : n - i]
    temporal = np.maximum(weight("T7"), weight("T8"))
    for onset in rng.uniform(0, n / sfreq - 1, size=int(n / sfreq / 20)):  # muscle bursts
        i = int(onset * sfreq)
        m = min(int(0.5 * sfreq), n - i)
        x[:, i:i + m] += 20.0 * temporal[:, None] * rng.standard_normal((C, m))
    if bad_channels:
        x[int(rng.integers(C))] = 0.0  # flat (disconnected electrode)
        x[int(rng.integers(C))] *= 30.0  # very noisy (bad contact)
    eog = 60.0 * _pink(rng, (1, n))
    data = amp * np.concatenate([x, eog]) * 1e-6  # uV -> V
    info = mne.create_info(names + ["EOG1"], sfreq, ["eeg"] * C + ["eog"])
    raw = mne.io.RawArray(data, info, verbose="error")
    if layout == "digitised24":
        jitter = pos + rng.normal(0, 0.002, pos.shape)
        raw.set_montage(mne.channels.make_dig_montage(dict(zip(names, jitter)), coord_frame="head"), verbose="error")
    raw.set_annotations(mne.Annotations([b[0] for b in blocks], [b[1] for b in blocks], [b[2] for b in blocks]))
    return raw, blocks


def make_demo_corpus(root: str | Path, cfg: DemoCorpusConfig | None = None) -> Path:
    """Write the corpus under ``root`` (BIDS-like) unless one with the same config is there; return ``root``.

    The corpus is generated in a staging folder and moved into place (:func:`foundation.data.demo.make_once`),
    so an interrupted run never leaves a half-written recording behind.
    """
    cfg = cfg or DemoCorpusConfig()
    return make_once(root, {"config": dataclasses.asdict(cfg), "version": 1}, lambda stage: _write(stage, cfg))


def _write(root: Path, cfg: DemoCorpusConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    layouts = list(LAYOUTS)
    rates = (200.0, 250.0, 256.0)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "foundation-suite EEG demo", "BIDSVersion": "1.9.0"}))
    for s in range(cfg.n_subjects):
        raw, _ = make_recording(layouts[s % 3], rng, cfg, rates[(s // 3) % 3], bad_channels=(s % 4 == 1))
        folder = root / f"sub-{s + 1:02d}" / "ses-01" / "eeg"
        folder.mkdir(parents=True, exist_ok=True)
        raw.save(folder / f"sub-{s + 1:02d}_ses-01_task-demo_eeg.fif", overwrite=True, verbose="error")
