"""Saliency windows (injected structured signal outranks noise) and the JEPA objective / EMA target."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from foundation.errors import DataError, TrainingError
from foundation.modalities.fmri.jepa import JepaConfig, JepaObjective
from foundation.modalities.fmri.saliency import parcel_series, random_windows, top_k_windows, window_scores
from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig, ema_momentum


def _noise_scan(rng, T=96, shape=(16, 16, 16)):
    return rng.normal(size=(T,) + shape).astype(np.float32), np.ones(shape, bool)


def test_window_with_injected_network_signal_outranks_noise():
    rng = np.random.default_rng(0)
    vol, mask = _noise_scan(rng)
    t0, W = 48, 12
    course = np.sin(np.linspace(0, 3 * np.pi, W))  # a smooth time course shared by a block of voxels
    vol[t0:t0 + W, 4:12, 4:12, 2:8] += 0.8 * course[:, None, None, None]
    starts = top_k_windows(vol, mask, window=W, k=1, stride=6)
    assert starts == [t0]
    s, scores = window_scores(parcel_series(vol, mask), W, 6)
    assert scores[list(s).index(t0)] > 2 * np.median(scores)


def test_pure_noise_scores_near_random_matrix_bound():
    rng = np.random.default_rng(1)
    vol, mask = _noise_scan(rng, T=200)
    series = parcel_series(vol, mask)
    R, W = series.shape[1], 20
    _, scores = window_scores(series, W, 10)
    # Marchenko-Pastur edge: the top eigenvalue of (1/W) X X^T for a W x R white-noise matrix is ~ (sqrt(R) + sqrt(W))^2 / W
    mp = (np.sqrt(R) + np.sqrt(W)) ** 2 / W / R
    assert np.all(scores < 1.5 * mp) and np.median(scores) > 0.6 * mp


def test_random_and_top_k_respect_overlap_and_count():
    rng = np.random.default_rng(2)
    starts = random_windows(100, 10, 4, rng, stride=5, max_overlap=0.5)
    assert len(starts) == 4 and all(b - a >= 5 for a, b in zip(starts, starts[1:]))
    vol, mask = _noise_scan(rng, T=40)
    assert len(top_k_windows(vol, mask, 10, 8)) <= 7  # at most the grid of half-overlapping windows


TINY = dict(input_size=(4, 16, 16, 16), embed_dim=8, num_heads=1, stages=(1, 1, 1), q_pool=2, q_stride=(1, 2, 2, 2),
            mask_unit_size=(1, 4, 4, 4), mask_unit_attn=(True, True, False), patch_kernel=(2, 2, 2, 2),
            patch_stride=(2, 2, 2, 2), patch_padding=(0, 0, 0, 0), predictor_dim=16, predictor_depth=1, predictor_heads=2,
            ema_start=0.9, ema_end=1.0, ema_steps=10)


def test_ema_schedule_and_update_closed_form():
    assert ema_momentum(0, 0.9, 1.0, 10) == 0.9 and ema_momentum(5, 0.9, 1.0, 10) == pytest.approx(0.95)
    assert ema_momentum(50, 0.9, 1.0, 10) == 1.0
    torch.manual_seed(0)
    model = SlimBrain(SlimBrainConfig(**TINY))
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target.parameters()]
    model.on_step_end(5)
    for t0, t1, s in zip(before, model.target.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(t1, 0.95 * t0 + 0.05 * s)
    p = next(model.encoder.parameters())
    p.ds_id = 0  # what DeepSpeed ZeRO-3 puts on partitioned parameters
    with pytest.raises(TrainingError, match="zero_stage <= 2"):
        model.on_step_end(6)


def _cast_params_like_deepspeed_bf16(model: torch.nn.Module) -> None:
    """What DeepSpeed's bf16 mode does to a module: parameters cast in place, buffers left in fp32."""
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)


@pytest.mark.parametrize("buffers_cast", [False, True])
def test_ema_under_bf16_moves_as_the_fp32_ema(buffers_cast):
    """100 steps of small encoder updates: the bf16 model's average equals the fp32 one to 1e-2 relative
    (rounding each update to bf16 in place would leave the target nearly frozen)."""
    torch.manual_seed(0)
    cfg = SlimBrainConfig(**{**TINY, "ema_start": 0.996, "ema_end": 0.996})
    fp32, bf16 = SlimBrain(cfg), SlimBrain(cfg)
    bf16.load_state_dict(fp32.state_dict())
    _cast_params_like_deepspeed_bf16(bf16)
    if buffers_cast:  # deepspeed.extra: {data_types: {buffer_dtype: bf16}} casts buffers too
        for b in bf16.buffers():
            b.data = b.data.to(torch.bfloat16)
    start = [t.detach().float().clone() for t in fp32.target.parameters()]
    g = torch.Generator().manual_seed(1)
    for step in range(100):
        with torch.no_grad():
            for a, b in zip(fp32.encoder.parameters(), bf16.encoder.parameters()):
                a.add_(1e-2 * torch.randn(a.shape, generator=g))
                b.copy_(a)  # the bf16 model's weights are its fp32 master weights rounded (as under DeepSpeed)
        fp32.on_step_end(step)
        bf16.on_step_end(step)
    moved = sum((t.float() - s0).norm() ** 2 for t, s0 in zip(fp32.target.parameters(), start)) ** 0.5
    diff = sum((a.float() - getattr(bf16.ema_master, n.replace(".", "__")).float()).norm() ** 2
               for (n, _), a in zip(bf16.target.named_parameters(), fp32.target.parameters())) ** 0.5
    assert moved > 0 and diff / moved < 1e-2, (float(moved), float(diff))
    assert all(t.dtype == torch.bfloat16 for t in bf16.target.parameters())  # the forward still runs in bf16


def _batch(B=2, fg_units=None):
    fg = torch.ones(B, 16, dtype=torch.bool)
    if fg_units is not None:
        fg[:] = False
        fg[:, :fg_units] = True
    return {"x": torch.randn(B, 1, 4, 16, 16, 16), "unit_fg": fg}


def test_objective_trains_context_and_predictor_not_target():
    torch.manual_seed(0)
    model = SlimBrain(SlimBrainConfig(**TINY))
    obj = JepaObjective(JepaConfig(mask_ratio=0.7))
    batch = _batch()
    batch["unit_fg"][0, 10:] = False  # background units of sample 0 are in neither encoder
    loss, metrics = obj(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and metrics["target_std"] > 0
    assert metrics["context_units"] == pytest.approx((round(10 * 0.3) + round(16 * 0.3)) / 2)
    assert metrics["target_units"] == pytest.approx((10 - 3 + 16 - 5) / 2)
    assert all(p.grad is None for p in model.target.parameters())
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0 and model.predictor.pos_embed.grad.abs().sum() > 0


def test_collapse_warning_and_bad_unit_counts(caplog):
    torch.manual_seed(0)
    model = SlimBrain(SlimBrainConfig(**TINY))
    with torch.no_grad():
        for blk in model.target.blocks:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
        for p in model.target.patch_embed.parameters():
            p.zero_()
        model.target.pos_embed_spatial.zero_()
        model.target.pos_embed_temporal.zero_()
        for blk in model.target.blocks:
            if hasattr(blk, "proj"):
                blk.proj.weight.zero_()
                blk.proj.bias.zero_()
    obj = JepaObjective(JepaConfig())
    with caplog.at_level(logging.WARNING, logger="foundation.modalities.fmri.jepa"):
        _, metrics = obj(model, _batch())
        assert "collapsing" not in caplog.text  # checked once per optimizer step, outside the compiled region
        obj.on_step_end(1)
    assert float(metrics["target_std"]) < 1e-6 and "collapsing" in caplog.text
    with pytest.raises(DataError, match="1 foreground mask unit"):
        obj(model, _batch(fg_units=1))
    bad = _batch()
    bad["unit_fg"] = bad["unit_fg"][:, :8]
    with pytest.raises(DataError, match="data gives 8 mask units per window, the encoder has 16"):
        obj(model, bad)


def test_slim_brain_hub_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SlimBrain(SlimBrainConfig(**TINY))
    model.save_pretrained(tmp_path / "m")
    loaded = SlimBrain.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    x = torch.randn(1, 4, 16, 16, 16)
    torch.testing.assert_close(loaded.eval().forward_features(x), model.eval().forward_features(x))
