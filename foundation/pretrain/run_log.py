"""What a run writes as it goes: a JSONL metrics log, loss/LR curves as PNG, optional TensorBoard."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from foundation.atomic import atomic_path, atomic_write_text

__all__ = ["RunLog", "plot_curves", "read_jsonl", "loss_components", "smooth", "LOSS_PARTS"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL metrics log, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# record keys that are parts of the loss besides ``loss_*`` ones (DeeperBrain: reconstruction + statistics)
LOSS_PARTS = ("recon", "stats")


def loss_components(records: list[dict[str, Any]]) -> list[str]:
    """Keys of the records that are parts of the loss: ``loss_<name>`` (the ultrasound model's per-task losses)
    and :data:`LOSS_PARTS`; counters such as ``visible`` or ``tasks_in_batch`` are not."""
    keys = dict.fromkeys(k for r in records for k in r)
    return [k for k in keys if (k.startswith("loss_") or k in LOSS_PARTS)
            and all(isinstance(r.get(k, 0.0), (int, float)) for r in records)]


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing); NaN-free input."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw the loss and each of its components (raw faint, smoothed solid; log scale when positive) and the
    learning rate against the step; write a PNG atomically.

    Args:
        records: metrics records with ``step``, ``loss`` and ``lr`` (components: :func:`loss_components`).
        path: target PNG.
        title: figure title (the recipe name).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [r["step"] for r in records]
    loss = [r["loss"] for r in records]
    lr = [r["lr"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    series = [("loss (total)", loss)] + [(k, [float(r.get(k, math.nan)) for r in records])
                                         for k in loss_components(records)]
    positive = True
    for i, (name, values) in enumerate(series):
        color = f"C{i}"
        finite = [v for v in values if math.isfinite(v)]
        positive &= bool(finite) and all(v > 0 for v in finite)
        ax_loss.plot(steps, values, color=color, lw=0.8, alpha=0.3)
        if len(finite) == len(values) and len(values) > 3:
            ax_loss.plot(steps, smooth(values), color=color, lw=1.6, label=name)
        else:
            ax_loss.plot([], [], color=color, label=name)
    if loss and positive:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="loss and its parts (faint: raw)")
    ax_loss.legend(fontsize=8, loc="best")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, lr, color="tab:orange", lw=1.2)
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    ax_lr.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


class RunLog:
    """Metrics writer of rank 0.

    Appends one JSON line per logged step to ``metrics.jsonl``; when resuming,
    lines beyond the resumed step are dropped first so the log reads as one run.

    Args:
        out_dir: the run's output folder.
        title: name shown on the curves.
        tensorboard: also write TensorBoard events under ``out_dir/tensorboard``.
        resume_step: drop log lines with ``step > resume_step`` (None: start a new log).
    """

    def __init__(self, out_dir: str | Path, title: str, tensorboard: bool = False,
                 resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.curves_path = self.out_dir / "curves.png"
        self.title = title
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            self.records = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        self._rewrite()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("train.tensorboard needs the 'tensorboard' package: "
                                  "pip install 'foundation-suite[tensorboard]'") from err
            # purge_step: events past the resumed step (written before a stop) are dropped, as in the JSONL log
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def _rewrite(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``; ``loss`` and ``lr`` for the curves)."""
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def plot(self) -> Path | None:
        """Write ``curves.png`` from the records so far (None when nothing is logged yet)."""
        if not self.records:
            return None
        return plot_curves(self.records, self.curves_path, self.title)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
