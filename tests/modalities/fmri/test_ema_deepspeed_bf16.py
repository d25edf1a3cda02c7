"""SLIM-Brain's EMA target trained under the real DeepSpeed engine in bf16 (ZeRO-2, one process).

DeepSpeed casts the model's parameters (the frozen target's included) to bf16. The test model records, at every
optimizer step, the encoder weights as DeepSpeed left them and keeps its own float64 EMA of them; after 100
steps the model's float32 average (``ema_master``) must equal that reference to 1e-2 relative. An average kept in
the bf16 parameters themselves (the code before) misses it by 0.31 in the same setting on CPU.
"""
from __future__ import annotations

import pytest
import torch

from foundation.config import load_recipe
from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig, ema_momentum
from foundation.pretrain.engine import Engine
from tests.modalities.fmri.test_fmri_saliency_jepa import TINY

pytestmark = pytest.mark.slow


class _RecordingSlimBrain(SlimBrain):
    """SlimBrain that keeps a float64 reference EMA of the encoder weights DeepSpeed hands it each step."""

    def __init__(self, config: SlimBrainConfig) -> None:
        super().__init__(config)
        self.start = [p.detach().double().clone() for p in self.target.parameters()]
        self.reference = [p.clone() for p in self.start]
        self.dtypes: set[torch.dtype] = set()

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        m = ema_momentum(step, self.config.ema_start, self.config.ema_end, self.config.ema_steps)
        for ref, s in zip(self.reference, self.encoder.parameters()):
            ref.mul_(m).add_(s.detach().double(), alpha=1.0 - m)
        self.dtypes |= {t.dtype for t in self.target.parameters()}
        super().on_step_end(step)


class _Windows(torch.utils.data.Dataset):
    """Random windows with every mask unit in the brain: ``x`` [1, T, Z, Y, X], ``unit_fg`` [U]."""

    def __init__(self, n: int, input_size: tuple[int, ...], n_units: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, *input_size, generator=g)
        self.n_units = n_units

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "unit_fg": torch.ones(self.n_units, dtype=torch.bool)}


def test_the_ema_under_deepspeed_bf16_follows_the_fp32_average(tmp_path):
    cfg = SlimBrainConfig(**{**TINY, "ema_start": 0.996, "ema_end": 0.996})
    torch.manual_seed(0)
    model = _RecordingSlimBrain(cfg)
    recipe = load_recipe("slim-brain-tiny", [
        "train.steps=100", "train.warmup_steps=5", "train.lr=1e-3", "train.micro_batch_size=2",
        "train.checkpoint_every=0", "train.progress_bar=false", "deepspeed.bf16=true", "deepspeed.zero_stage=2",
    ])
    Engine(recipe, tmp_path / "run", model=model, dataset=_Windows(8, cfg.input_size, model.encoder.n_units)).run()
    assert model.dtypes == {torch.bfloat16}  # DeepSpeed did cast the target to bf16
    names = [n for n, _ in model.target.named_parameters()]
    master = [getattr(model.ema_master, n.replace(".", "__")).double() for n in names]
    moved = sum((r - s0).norm() ** 2 for r, s0 in zip(model.reference, model.start)) ** 0.5
    diff = sum((m - r).norm() ** 2 for m, r in zip(master, model.reference)) ** 0.5
    print(f"EMA under DeepSpeed bf16: moved {float(moved):.4g}, relative difference {float(diff / moved):.3g}")
    assert moved > 0 and float(diff / moved) < 1e-2, (float(moved), float(diff))
