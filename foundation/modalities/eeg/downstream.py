"""Downstream evaluation of DeeperBrain encoders: frozen probing, region pooling, band-power baseline.

- :func:`encode_windows`: pooled frozen features [S, D] (mean over every real channel's patches).
- :func:`band_power_features`: the handcrafted baseline, log band power per band averaged over six
  scalp regions (nearest of Fz, Cz, T7, T8, Pz, Oz by 3D position), so it works on any montage.
- :func:`frozen_probe`: linear or small-MLP probe (``foundation.eval.probe.fit_probe``) on a
  subject-disjoint split; balanced accuracy, Cohen's kappa, weighted F1, AUROC (and AUC-PR when binary).
- fine-tuning (full with layer-wise LR decay, LoRA, Dopamine, probes) is the shared loop of
  :mod:`foundation.finetune`: ``foundation finetune --recipe deeperbrain-tiny-probe`` from a checkpoint, or
  ``finetune_model(TaskModel.for_encoder(encoder, n_classes), train, test, recipe, opts, out)`` in memory.
- :func:`write_report`: a markdown results table and a confusion-matrix PNG.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.errors import ConfigError, DataError
from foundation.eval.probe import fit_probe
from foundation.eval.report import markdown_table, save_confusion_matrix
from foundation.finetune.features import extract_features
from foundation.modalities.eeg.channels import template_positions
from foundation.modalities.eeg.model import DeeperBrain

__all__ = ["REGIONS", "encode_windows", "band_power_features", "frozen_probe", "write_report"]

REGIONS = ("Fz", "Cz", "T7", "T8", "Pz", "Oz")


def _loader(dataset: torch.utils.data.Dataset, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def _region_of(pos: torch.Tensor) -> torch.Tensor:
    """Index of the nearest region anchor (REGIONS) of each position [..., 3] -> [...]."""
    table = template_positions()
    anchors = torch.tensor(np.stack([table[r.upper()][1] for r in REGIONS]), dtype=torch.float32)
    return torch.cdist(pos.float().reshape(-1, 3), anchors).argmin(1).reshape(pos.shape[:-1])


@torch.no_grad()
def encode_windows(model: DeeperBrain, dataset: torch.utils.data.Dataset, batch_size: int = 32,
                   pool: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every window, eval mode, no grad.

    Args:
        model: the encoder.
        dataset: items with ``x``, ``pos``, ``chan_mask``, ``label``.
        batch_size: windows per forward.
        pool: "mean" over every real token -> [S, D]; "regions": mean per scalp region (nearest of
            :data:`REGIONS`, the band-power baseline's regions; a region without channels takes the
            window mean) -> [S, 6 * D].

    Returns:
        ``(X float32, y [S])``.
    """
    if pool not in ("mean", "regions"):
        raise ConfigError(f"encode_windows: unknown pool {pool!r}; valid: mean, regions")
    if pool == "mean":
        return extract_features(model, _loader(dataset, batch_size))
    was = model.training
    model.eval()
    xs, ys = [], []
    try:
        for b in _loader(dataset, batch_size):
            xs.append(_region_pool(model, b).float())
            ys.append(b["label"])
    finally:
        model.train(was)
    return torch.cat(xs), torch.cat(ys)


def _region_pool(model: DeeperBrain, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean encoder token per region: -> [B, 6 * D]."""
    x, pos, mask = b["x"], b["pos"], b["chan_mask"]
    B, C, T = x.shape
    P = T // model.config.patch_size
    packed, cu = model.forward_features(x, pos, mask)  # every real token, channel-major per sample
    valid = model.valid_tokens(mask, P)  # [B, N]
    chan = torch.arange(C).repeat_interleave(P).expand(B, -1)[valid]  # [K] channel of each packed token
    sample = torch.arange(B).repeat_interleave((cu[1:] - cu[:-1]).long())  # [K]
    region = _region_of(pos)[sample, chan]  # [K]
    R = len(REGIONS)
    slot = sample * R + region
    sums = packed.new_zeros(B * R, packed.shape[1]).index_add_(0, slot, packed)
    cnt = torch.bincount(slot, minlength=B * R).to(packed.dtype)[:, None]
    mean = packed.new_zeros(B, packed.shape[1]).index_add_(0, sample, packed) / (cu[1:] - cu[:-1])[:, None].to(packed.dtype)
    per = torch.where(cnt > 0, sums / cnt.clamp(min=1), mean.repeat_interleave(R, 0))
    return per.reshape(B, R * packed.shape[1])  # [B * R, D] -> [B, R * D]


def band_power_features(dataset: torch.utils.data.Dataset, sfreq: float,
                        bands: Sequence[tuple[float, float]]) -> torch.Tensor:
    """Log band power per (region, band), averaged over each region's channels: -> [S, 6 * n_bands].

    Args:
        dataset: items with ``x`` [C, T], ``pos`` [C, 3], ``chan_mask`` [C].
        sfreq: sampling rate of the windows in Hz.
        bands: (low, high) band edges in Hz.
    """
    from scipy import signal

    table = template_positions()
    anchors = np.stack([table[r.upper()][1] for r in REGIONS])  # [R, 3]
    feats = []
    for i in range(len(dataset)):
        item = dataset[i]
        m = item["chan_mask"].numpy()
        x, pos = item["x"].numpy()[m].astype(np.float64), item["pos"].numpy()[m]
        f, p = signal.welch(x, fs=sfreq, nperseg=min(x.shape[-1], int(sfreq)), axis=-1)
        bp = np.stack([p[:, (f >= lo) & (f < hi)].sum(-1) for lo, hi in bands], 1)  # [C, n_bands]
        region = np.linalg.norm(pos[:, None] - anchors[None], axis=-1).argmin(1)  # [C]
        row = []
        for r in range(len(REGIONS)):
            sel = region == r
            row.append(np.log(bp[sel].mean(0) + 1e-12) if sel.any() else np.log(bp.mean(0) + 1e-12))
        feats.append(np.concatenate(row))
    return torch.tensor(np.stack(feats), dtype=torch.float32)


def frozen_probe(X: torch.Tensor, y: torch.Tensor, train_idx: np.ndarray, test_idx: np.ndarray, *,
                 kind: str = "linear", seed: int = 0, epochs: int = 300) -> Any:
    """Fit a probe on the train rows and score the test rows (see ``fit_probe``).

    Raises:
        DataError: unlabelled windows (label -1) among the rows.
    """
    rows = np.concatenate([train_idx, test_idx])
    if (y[rows] < 0).any():
        raise DataError("frozen_probe: windows with label -1 (unlabelled); build the cache with data.labels set")
    return fit_probe(X[train_idx], y[train_idx], X[test_idx], y[test_idx], kind=kind, seed=seed, epochs=epochs)


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, y_true: torch.Tensor, y_pred: torch.Tensor,
                 labels: Sequence[str], title: str = "") -> tuple[Path, Path]:
    """Write ``results.md`` (the rows as a markdown table) and ``confusion.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(markdown_table(rows))
    return md, save_confusion_matrix(y_true, y_pred, labels, out / "confusion.png", title=title)
