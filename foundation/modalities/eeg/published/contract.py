"""A checkpoint's input contract applied to the suite's EEG windows: rate, window, units, channel table and order.

The rate, window length and units go into the data config before the cache is built
(:func:`adapt_data_config`: ``preprocess.sfreq``, ``preprocess.scale``, ``window_seconds``; the cache folder gets a
``-<rate>hz`` suffix so caches at other rates stay). The channels are mapped per recording by one linear map
``W [C_table, C_recording]`` (:func:`channel_plan`), applied to each window by :class:`ContractWindows`:

- a channel of the table the recording has (any spelling :func:`~foundation.modalities.eeg.channels.canonical_name`
  knows: ``EEG T3-REF`` = ``T7``): **mapped**;
- one it lacks: **interpolated** from the recording's electrodes by MNE's spherical splines
  (``Raw.interpolate_bads`` on the identity, so ``W``'s rows are exactly MNE's interpolation weights) at the
  template position of the missing electrode, or **masked** (zeros), as the user chooses;
- BIOT's bipolar derivations (``FP1-F7``) are **derived** as differences of the two (mapped or interpolated)
  electrodes, unless the recording holds that derivation itself;
- recording channels outside the table (and not a derivation's electrode) are **dropped** from the input (with
  ``interpolate`` they still inform the splines, as every electrode does);
- every mapping is listed per recording in :attr:`ContractWindows.channel_report`.

Then per window: ``quantile95`` divides each channel by the 95th percentile of its absolute value (BIOT's
datasets); ``minmax-scale`` scales the window's EEG channels jointly to [-1, 1] and fills BENDR's last channel
with the window's relative amplitude ``2 * (min(ptp / ptp_max, 1) - 0.5)`` (dn3's ``MappingDeep1010``; ``ptp_max``
is the largest window peak-to-peak of the data set).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from foundation.errors import DataError

__all__ = ["adapt_data_config", "channel_plan", "ContractWindows"]

SCALE_CHANNEL = "SCALE"


def adapt_data_config(data: Any, cfg: Any) -> Any:
    """``data`` (a recipe's data section, ``EEGWindowsConfig``) at the contract's rate, units and window.

    Args:
        data: the recipe's data section (``name`` and ``config``).
        cfg: the encoder's :class:`~foundation.modalities.eeg.published.model.PublishedEEGConfig`.
    """
    c = data.config
    pre = dataclasses.replace(c.preprocess, sfreq=cfg.sfreq, scale=cfg.scale, clip=cfg.scale * 1e-3,
                              h_freq=min(c.preprocess.h_freq, 0.45 * cfg.sfreq),
                              notch=tuple(f for f in c.preprocess.notch if f < cfg.sfreq / 2))
    window = cfg.n_times / cfg.sfreq
    new = dataclasses.replace(c, preprocess=pre, window_seconds=window,
                              cache_dir=f"{c.cache_dir}-{cfg.sfreq:g}hz-{cfg.scale:g}")
    return dataclasses.replace(data, config=new)


def _canon(name: str) -> str:
    from foundation.modalities.eeg.channels import canonical_name

    return (canonical_name(name) or name).upper()


def _spline_rows(names: list[str], positions: np.ndarray, missing: list[str]) -> np.ndarray:
    """MNE's spherical-spline weights ``[M, C]`` of the ``missing`` electrodes from the recording's ``names``."""
    import mne

    from foundation.modalities.eeg.channels import template_positions

    table = template_positions(None)
    unknown = [m for m in missing if m.upper() not in table]
    if unknown:
        raise DataError(f"channels {unknown} of the checkpoint's table have no template position to interpolate at; "
                        "choose missing_channels=mask or a checkpoint table without them")
    all_names = list(names) + [table[m.upper()][0] + "__missing" for m in missing]
    pos = np.vstack([positions, np.stack([table[m.upper()][1] for m in missing])])
    info = mne.create_info(all_names, 100.0, "eeg")
    C, M = len(names), len(missing)
    raw = mne.io.RawArray(np.vstack([np.eye(C), np.zeros((M, C))]), info, verbose="error")
    raw.set_montage(mne.channels.make_dig_montage(dict(zip(all_names, pos)), coord_frame="head"), verbose="error")
    raw.info["bads"] = all_names[C:]
    raw.interpolate_bads(reset_bads=True, origin=(0.0, 0.0, 0.0), verbose="error")
    return raw.get_data()[C:]


def channel_plan(names: list[str], positions: np.ndarray, targets: tuple[str, ...],
                 missing: str = "interpolate") -> tuple[np.ndarray, dict[str, list[str]]]:
    """The linear map from a recording's channels onto a checkpoint's channel table, and what it did.

    Args:
        names: the recording's channel names ``[C]`` (as cached: canonical 10-05 spellings).
        positions: their positions ``[C, 3]`` in metres.
        targets: the table, in order (bipolar ``A-B`` names allowed; BENDR's ``SCALE`` is filled later, row 0).
        missing: ``interpolate`` or ``mask``.

    Returns:
        ``(W [len(targets), C] float64, {"mapped", "interpolated" | "masked", "derived", "dropped"})``.
    """
    rec = {_canon(n): i for i, n in enumerate(names)}
    C = len(names)
    rows: dict[str, np.ndarray] = {}
    absent: list[str] = []
    found: list[str] = []

    def electrode(e: str) -> None:
        if e in rows or e in absent:
            return
        if e in rec:
            rows[e] = np.eye(C)[rec[e]]
            found.append(e)
        else:
            absent.append(e)

    pairs = {}
    for t in targets:
        if t == SCALE_CHANNEL:
            continue
        if "-" in t and _canon(t) not in rec:
            a, b = (_canon(p) for p in t.split("-"))
            pairs[t] = (a, b)
            electrode(a)
            electrode(b)
        elif "-" in t:
            rows[t] = np.eye(C)[rec[_canon(t)]]
            found.append(t)
        else:
            electrode(_canon(t))
    if absent:
        fill = _spline_rows(list(names), np.asarray(positions, np.float64), absent) if missing == "interpolate" \
            else np.zeros((len(absent), C))
        rows.update(dict(zip(absent, fill)))
    W = np.zeros((len(targets), C))
    for i, t in enumerate(targets):
        if t == SCALE_CHANNEL:
            continue
        W[i] = rows[pairs[t][0]] - rows[pairs[t][1]] if t in pairs else rows[t] if t in rows else rows[_canon(t)]
    taken = set(found)
    report = {"mapped": found,
              "interpolated" if missing == "interpolate" else "masked": list(absent),
              "derived": list(pairs), "dropped": [n for n in names if _canon(n) not in taken]}
    return W, report


class ContractWindows(torch.utils.data.Dataset):
    """A cached EEG data set (``eeg-windows``) seen through a checkpoint's contract.

    Items: ``{"x": [C_table, T] float32, "label", "subject"}`` (``x`` in the contract's channel order and units).

    Args:
        dataset: an :class:`~foundation.modalities.eeg.dataset.EEGWindows` built with :func:`adapt_data_config`.
        cfg: the encoder's ``PublishedEEGConfig``.

    Raises:
        DataError: the cache's rate or window differs from the contract's (build it through adapt_data_config).
    """

    def __init__(self, dataset: Any, cfg: Any) -> None:
        self.dataset, self.cfg = dataset, cfg
        idx = dataset.index
        T = int(round(idx["window_seconds"] * idx["sfreq"]))
        if abs(idx["sfreq"] - cfg.sfreq) > 1e-6 or T != cfg.n_times:
            raise DataError(f"cache {dataset.config.cache_dir}: windows of {T} samples at {idx['sfreq']:g} Hz, the "
                            f"checkpoint expects {cfg.n_times} at {cfg.sfreq:g} Hz; build the data config with "
                            "adapt_data_config (foundation finetune does)")
        targets = tuple(cfg.channels)
        self.starts, self.maps, self.channel_report = [], [], []
        for e in idx["entries"]:
            meta = e["meta"]
            W, rep = channel_plan(meta["channels"], np.asarray(meta["positions"]), targets, cfg.missing_channels)
            self.starts.append(int(meta["first_window"]))
            self.maps.append(torch.from_numpy(W).float())
            self.channel_report.append({"recording": meta["path"], **rep})
        self.starts_arr = np.asarray(self.starts)
        self.ptp_max = self._ptp_max() if cfg.normalize == "minmax-scale" else 1.0

    def _mapped(self, r: int) -> torch.Tensor:
        k = int(np.searchsorted(self.starts_arr, r, side="right") - 1)
        W = self.maps[k]
        x = torch.from_numpy(np.asarray(self.dataset.windows[r][:W.shape[1]], dtype=np.float32))  # [C_rec, T]
        return W @ x  # [C_table, T]

    def _ptp_max(self) -> float:
        eeg = torch.tensor([c != SCALE_CHANNEL for c in self.cfg.channels])
        top = 0.0
        for r in self.dataset.rows:
            x = self._mapped(int(r))[eeg]
            top = max(top, float(x.max() - x.min()))
        return top or 1.0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = int(self.dataset.rows[i])
        x = self._mapped(r)
        if self.cfg.normalize == "quantile95":
            x = x / (torch.quantile(x.abs(), 0.95, dim=-1, keepdim=True) + 1e-8)
        elif self.cfg.normalize == "minmax-scale":
            eeg = torch.tensor([c != SCALE_CHANNEL for c in self.cfg.channels])
            lo, hi = x[eeg].min(), x[eeg].max()
            x[eeg] = (x[eeg] - lo) / (hi - lo).clamp_min(1e-12) * 2 - 1
            x[~eeg] = 2 * (min(float(hi - lo) / self.ptp_max, 1.0) - 0.5)
        return {"x": x.contiguous(), "label": torch.tensor(int(self.dataset.labels[r])),
                "subject": torch.tensor(int(self.dataset.subject_ids[r]))}

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    def groups(self) -> list[str]:
        return self.dataset.groups()

    def item_labels(self) -> list[int]:
        return self.dataset.item_labels()

    def item_sources(self) -> list[str]:
        return self.dataset.item_sources()

    def preprocessing(self) -> dict[str, Any]:
        """The recordings' preprocessing plus the checkpoint's contract (channel table, units, normalisation)."""
        c = self.cfg
        return {**self.dataset.preprocessing(), "channels": list(c.channels), "scale_from_volts_contract": c.scale,
                "normalize": c.normalize, "missing_channels": c.missing_channels}

    def describe(self) -> str:
        return f"{self.dataset.describe()} Input contract: {self.summary()}."

    def summary(self) -> str:
        """One line: the contract and, over the recordings, what was mapped, interpolated/masked and dropped."""
        def count(key: str) -> str:
            per = [len(r.get(key, [])) for r in self.channel_report]
            return f"{min(per)}-{max(per)}" if per and min(per) != max(per) else str(per[0] if per else 0)

        fill = "interpolated" if self.cfg.missing_channels == "interpolate" else "masked"
        return (f"{len(self.cfg.channels)} channels ({', '.join(self.cfg.channels[:4])} ...) at {self.cfg.sfreq:g} Hz, "
                f"{self.cfg.n_times} samples, units x{self.cfg.scale:g}, normalize {self.cfg.normalize}; per recording "
                f"mapped {count('mapped')}, {fill} {count(fill)}, derived {count('derived')}, dropped {count('dropped')}")
