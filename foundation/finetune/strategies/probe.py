"""Probes on frozen features: the encoder runs once over both splits, then a linear or small-MLP probe fits.

The pooled features ``[S, D]`` are cached in the run folder (``features.safetensors``) under a key of the
checkpoint, data, split and pooling, so a second probe on the same run reuses them. The probe itself is
:func:`foundation.eval.probe.fit_probe` (standardised features, full-batch AdamW, seeded by ``train.seed``).
"""
from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from foundation.adapters.state import is_writer_rank
from foundation.atomic import atomic_path, atomic_write_json
from foundation.eval.probe import ProbeResult
from foundation.finetune.features import extract_features
from foundation.finetune.strategies.base import FinetuneJob, Strategy

__all__ = ["LinearProbe", "MlpProbe", "frozen_features"]

FEATURES_NAME = "features.safetensors"


def frozen_features(job: FinetuneJob) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(X_train [S, D], y_train, X_test, y_test)`` of the frozen encoder; cached when ``job.feature_key`` is set."""
    file, meta = job.out / FEATURES_NAME, job.out / "features.json"
    if job.feature_key is not None and file.is_file() and meta.is_file():
        import json

        if json.loads(meta.read_text()).get("key") == job.feature_key:
            cached = load_file(file)
            return cached["X_train"], cached["y_train"], cached["X_test"], cached["y_test"]
    encoder, pool = job.model.encoder, job.model.config.pool
    Xtr, ytr = extract_features(encoder, job.loader(job.train), pool=pool, progress="frozen features (train)",
                                **job.keys)
    Xte, yte = extract_features(encoder, job.loader(job.test), pool=pool, progress="frozen features (held out)",
                                **job.keys)
    if job.feature_key is not None and is_writer_rank():
        with atomic_path(file) as tmp:
            save_file({"X_train": Xtr, "y_train": ytr, "X_test": Xte, "y_test": yte}, str(tmp))
        atomic_write_json(meta, {"key": job.feature_key})
    return Xtr, ytr, Xte, yte


class _Probe(Strategy):
    kind = ""
    new_head = False

    def __init__(self) -> None:
        self.result: ProbeResult | None = None
        self.y_test: torch.Tensor | None = None

    def fit(self, job: FinetuneJob) -> None:
        Xtr, ytr, Xte, self.y_test = frozen_features(job)
        self.result = job.fit_probe(Xtr, ytr, Xte, self.y_test, kind=self.kind)

    def predict(self, job: FinetuneJob) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.result.y_prob if job.task == "classification" else self.result.y_pred
        return out, self.y_test

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.result.model.parameters())

    def save(self, job: FinetuneJob, metrics: dict[str, float]) -> dict[str, str]:
        """``probe_head.safetensors``: the probe's weights (on standardised features)."""
        path = job.out / "probe_head.safetensors"
        if is_writer_rank():
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in self.result.model.state_dict().items()}, str(tmp))
        return {"probe_head": str(path)}


class LinearProbe(_Probe):
    """A linear probe (multinomial logistic regression / linear regression) on frozen features."""

    name, kind = "linear-probe", "linear"


class MlpProbe(_Probe):
    """A one-hidden-layer MLP probe on frozen features."""

    name, kind = "mlp-probe", "mlp"
