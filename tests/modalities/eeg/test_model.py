"""DeeperBrain: visible-only encoding, batch invariance, decoder and statistics head, hub round trip."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError, DataError
from foundation.modalities.eeg.model import DeeperBrain, DeeperBrainConfig
from foundation.data.masking import sample_keep
from foundation.modalities.eeg.objective import DeeperBrainObjective, DeeperBrainObjectiveConfig
from foundation.registry import MODELS, OBJECTIVES
from tests.modalities.eeg._helpers import tiny_model_config


def _batch(B: int = 3, C: int = 5, P: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, C, dtype=torch.bool)
    mask[1, 3:] = False  # sample 1 has 3 channels, sample 2 has 4
    mask[2, 4:] = False
    return {"x": torch.randn(B, C, 200 * P, generator=g) * 0.1, "pos": torch.randn(B, C, 3, generator=g) * 0.05,
            "chan_mask": mask, "stats": torch.randn(B, C, 8, generator=g)}


def test_registered():
    assert MODELS.get("deeperbrain") is DeeperBrain
    assert OBJECTIVES.get("deeperbrain") is DeeperBrainObjective


def test_sample_alone_equals_sample_in_a_batch():
    torch.manual_seed(0)
    model = DeeperBrain(tiny_model_config()).eval()
    b = _batch()
    keep, _ = sample_keep(model.valid_tokens(b["chan_mask"], 3), 0.5, torch.Generator().manual_seed(1))
    packed, cu = model.forward_features(b["x"], b["pos"], b["chan_mask"], keep)
    for i in range(3):
        n_real = int(b["chan_mask"][i].sum())  # alone: only its real channels, no padding at all
        alone, cu1 = model.forward_features(b["x"][i:i + 1, :n_real], b["pos"][i:i + 1, :n_real], None, [keep[i]])
        torch.testing.assert_close(packed[cu[i]:cu[i + 1]], alone, atol=1e-5, rtol=1e-4)


def test_masked_tokens_are_deleted_not_carried():
    torch.manual_seed(0)
    model = DeeperBrain(tiny_model_config(input_norm="none")).eval()  # "window" shares one scale over the window
    b = _batch()
    keep = [torch.tensor([0, 4]), torch.tensor([1]), torch.tensor([2, 5, 7])]
    packed, cu = model.forward_features(b["x"], b["pos"], b["chan_mask"], keep)
    assert packed.shape == (6, 32) and cu.tolist() == [0, 2, 3, 6]
    # a masked patch's content cannot reach the visible tokens
    x2 = b["x"].clone()
    x2[0, 0, 200:400] += 5.0  # token 1 of sample 0 (channel 0, patch 1) is masked
    packed2, _ = model.forward_features(x2, b["pos"], b["chan_mask"], keep)
    torch.testing.assert_close(packed, packed2)


def test_all_real_tokens_when_keep_is_none_and_pooled_features():
    model = DeeperBrain(tiny_model_config()).eval()
    b = _batch()
    packed, cu = model.forward_features(b["x"], b["pos"], b["chan_mask"])
    assert (cu[1:] - cu[:-1]).tolist() == [15, 9, 12]
    pooled = model.pooled_features(b["x"], b["pos"], b["chan_mask"])
    torch.testing.assert_close(pooled[1], packed[15:24].mean(0))


def test_objective_trains_every_part_and_ablation_leaves_stats_head_untrained():
    torch.manual_seed(0)
    model = DeeperBrain(tiny_model_config())
    b = _batch()
    loss, met = DeeperBrainObjective(DeeperBrainObjectiveConfig(mask_ratio=0.5))(model, b)
    loss.backward()
    assert torch.isfinite(loss) and set(met) == {"recon", "stats", "visible"}
    assert 0.4 < float(met["visible"]) < 0.6
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()), \
        [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    model.zero_grad()
    loss, _ = DeeperBrainObjective(DeeperBrainObjectiveConfig(stats_weight=0.0))(model, b)
    loss.backward()
    assert model.stats_head.weight.grad.abs().sum() == 0
    assert model.decoder_pred.weight.grad.abs().sum() > 0


def test_reconstruction_shape_and_zero_padding():
    model = DeeperBrain(tiny_model_config())
    b = _batch()
    keep, _ = sample_keep(model.valid_tokens(b["chan_mask"], 3), 0.5)
    recon, stats = model(b["x"], b["pos"], b["chan_mask"], keep)
    assert recon.shape == (3, 15, 200) and stats.shape == (3, 5, 8)
    assert recon[1, 9:].abs().sum() == 0  # padded channels 3, 4 of sample 1


def test_window_input_norm_is_scale_free_and_ignores_padding():
    model = DeeperBrain(tiny_model_config()).eval()
    b = _batch()
    a = model.pooled_features(b["x"], b["pos"], b["chan_mask"])
    torch.testing.assert_close(model.pooled_features(b["x"] * 7.0, b["pos"], b["chan_mask"]), a, atol=1e-4, rtol=1e-4)
    x2 = b["x"].clone()
    x2[1, 3:] = 100.0  # garbage in padded channels of sample 1
    torch.testing.assert_close(model.pooled_features(x2, b["pos"], b["chan_mask"]), a)


def test_bad_inputs_raise():
    model = DeeperBrain(tiny_model_config())
    b = _batch()
    with pytest.raises(DataError, match="not a multiple of patch_size = 200"):
        model.forward_features(b["x"][..., :250], b["pos"])
    with pytest.raises(DataError, match=r"pos must be \[B, C, 3\]"):
        model.forward_features(b["x"], b["pos"][:, :2])
    with pytest.raises(ConfigError, match="model.embed_dim=30 must be divisible by model.num_heads=4"):
        DeeperBrainConfig(embed_dim=30, num_heads=4)


def test_hub_round_trip(tmp_path):
    model = DeeperBrain(tiny_model_config(mlp="kan", activation="silu"))
    model.save_pretrained(tmp_path / "m")
    again = DeeperBrain.from_pretrained(tmp_path / "m")
    b = _batch()
    torch.testing.assert_close(model.eval().pooled_features(b["x"], b["pos"], b["chan_mask"]),
                               again.eval().pooled_features(b["x"], b["pos"], b["chan_mask"]))


def _old_objective(cfg: DeeperBrainObjectiveConfig, model, batch):
    """The objective before the masks moved to ``prepare`` (commit b45ef54): a per-sample loop and boolean
    indexing, kept as the reference."""
    import torch.nn.functional as F

    x, pos, chan_mask, stats = batch["x"], batch["pos"], batch["chan_mask"], batch["stats"]
    B, C, T = x.shape
    P = T // model.config.patch_size
    valid = chan_mask[:, :, None].expand(B, C, P).reshape(B, C * P)
    keep, _ = sample_keep(valid, cfg.mask_ratio)
    recon, pred_stats = model(x, pos, chan_mask, keep)
    visible = torch.zeros_like(valid)
    for b, k in enumerate(keep):
        visible[b, k] = True
    masked = valid & ~visible
    target = model.scale_input(x, chan_mask).reshape(B, C * P, model.config.patch_size)
    if not masked.any():
        masked = valid
    rec = F.smooth_l1_loss(recon[masked].float(), target[masked].float(), beta=cfg.recon_beta)
    st = F.smooth_l1_loss(pred_stats[chan_mask].float(), stats[chan_mask].float(), beta=cfg.stats_beta)
    return rec + cfg.stats_weight * st, {"recon": rec, "stats": st,
                                         "visible": visible.sum().float() / valid.sum().clamp(min=1)}


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_objective_equals_the_per_sample_loop_it_replaces(mask_ratio):
    cfg = DeeperBrainObjectiveConfig(mask_ratio=mask_ratio, stats_weight=0.7)
    torch.manual_seed(0)
    model = DeeperBrain(tiny_model_config())
    b = _batch()
    torch.manual_seed(3)
    loss, met = DeeperBrainObjective(cfg)(model, b)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    torch.manual_seed(3)  # the same masks
    ref, ref_met = _old_objective(cfg, model, b)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, ref)
    for k in ref_met:
        torch.testing.assert_close(met[k], ref_met[k])
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_spectral_log1p_equals_aten_log1p():
    """The spectral features' log(1 + |X|) (Goldberg's correction, issue 16) within 2e-7 of ``torch.log1p``,
    from 0 through tiny to large magnitudes; exact 0 at 0; ATen's own log1p and derivative where x needs a
    gradient."""
    from foundation.modalities.eeg.model import _log1p

    g = torch.Generator().manual_seed(0)
    amp = torch.fft.rfft(torch.randn(4, 32, 4, 200, generator=g), dim=-1).abs()
    x = torch.cat([amp.flatten(), torch.logspace(-30, 30, 2001), torch.zeros(3)])
    ref = torch.log1p(x.double())
    got = _log1p(x)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert float(((got.double() - ref).abs() / ref.clamp_min(1e-300)).nan_to_num(0.0).max()) < 2e-7
    assert torch.equal(got[-3:], torch.zeros(3))
    xg = x[:100].clone().requires_grad_(True)
    _log1p(xg).sum().backward()
    torch.testing.assert_close(xg.grad, 1 / (1 + x[:100]), rtol=1e-6, atol=0)


def test_masked_mean_ignores_entries_outside_the_rows_values_and_gradients():
    """Issue 16: the masked mean selects against a scalar zero (no zero-filled buffer); the mean and its
    gradient are those of indexing the rows, and a non-finite entry outside them changes neither."""
    from foundation.modalities.eeg.objective import _masked_mean

    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, 4, generator=g)
    rows = torch.rand(3, 5, generator=g) > 0.4
    values[~rows] = float("nan")
    values[0, torch.nonzero(~rows[0])[:1, 0]] = float("inf")
    a = values.clone().requires_grad_(True)
    got = _masked_mean(a, rows)
    got.backward()
    b = values.clone().requires_grad_(True)
    want = b[rows].mean()
    want.backward()
    assert torch.equal(got, want) or torch.allclose(got, want, rtol=1e-6, atol=0)
    assert torch.equal(a.grad, b.grad)
    assert float(_masked_mean(values, torch.zeros_like(rows))) == 0.0  # no row: 0 / 1, not nan
