"""Sparse inference (SparseMlp): exact against the dense MLP at threshold 0, equal to the hook-zeroing passes of
sparsity.py at the same thresholds (the reference), multiply-add counts equal to closed forms, and the swap on each
shipped tiny model."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from foundation.config import load_recipe
from foundation.errors import ConfigError, DataError
from foundation.layers.create_mlp import make_mlp
from foundation.layers.mlp import Mlp
from foundation.layers.sparse_mlp import MODES, SparseMlp, apply_to_encoder, calibrate_chess, mlp_names
from foundation.layers.sparsity import apply_channel_thresholds, apply_wina, wina_keep_count, wina_mask
from foundation.registry import MODELS


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mlp(act: str = "gelu", d: int = 12, h: int = 48) -> Mlp:
    torch.manual_seed(0)
    return Mlp(d, h, d, act).eval()


class _Two(nn.Module):
    """Two residual MLPs in a row: the second sees the first's gated output."""

    def __init__(self, act: str) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = Mlp(12, 48, 12, act), Mlp(12, 40, 12, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a(x)
        return x + self.b(x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_threshold_zero_equals_the_dense_mlp(mode: str, act: str) -> None:
    mlp = _mlp(act)
    x = _x(3, 7, 12)
    chess = SparseMlp(mlp, "chess", thresholds=torch.zeros(48), mode=mode).eval()
    wina = SparseMlp(mlp, "wina", sparsity=0.0, input_sparsity=0.0, mode=mode).eval()
    with torch.no_grad():
        dense = mlp(x)
        torch.testing.assert_close(chess(x), dense, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(wina(x), dense, rtol=1e-6, atol=1e-6)
    zeros = int((torch.relu(mlp.fc1(x)) == 0).sum()) if act == "relu" else 0  # exact zeros are skipped for free
    assert chess.count.skipped == zeros * 12
    assert chess.count.dense == 21 * (12 * 48 + 48 * 12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ["gelu", "relu", "topk-relu", "crrelu"])
def test_chess_gather_equals_hook_zeroing_reference(mode: str, act: str) -> None:
    model = _Two(act).eval()
    calib, held = [_x(4, 6, 12, seed=s) for s in range(3)], _x(5, 6, 12, seed=9)
    thr = calibrate_chess(model, calib, target=0.95)  # above top-k (k=0.1)'s own 90% zeros
    assert set(thr) == {"a", "b"} and thr["a"].shape == (48,)
    with torch.no_grad(), apply_channel_thresholds(model, {f"{n}.act": t for n, t in thr.items()}):
        ref = model(held)
    with torch.no_grad(), apply_to_encoder(model, "chess", thresholds=thr, mode=mode) as sparse:
        out = model(held)
        count = sparse.count()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert 0.2 < count.skipped / (30 * (48 + 40) * 12) <= 1.0  # a real share of fc2's multiply-adds was skipped
    assert isinstance(model.a, Mlp)  # removed on exit
    with torch.no_grad():
        assert not torch.allclose(model(held), ref)  # and the gating was not a no-op


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_wina_gather_equals_hook_zeroing_reference(mode: str, act: str) -> None:
    model = _Two(act).eval()
    held = _x(5, 6, 12, seed=3)
    with torch.no_grad(), apply_wina(model, {"a.fc1": 0.25, "a.fc2": 0.5, "b.fc1": 0.25, "b.fc2": 0.5}):
        ref = model(held)
    with torch.no_grad(), apply_to_encoder(model, "wina", sparsity=0.5, input_sparsity=0.25, mode=mode):
        out = model(held)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_wina_mask_keeps_the_largest_weighted_magnitudes() -> None:
    x = torch.tensor([[1.0, -3.0, 2.0, 0.5]])
    norms = torch.tensor([4.0, 1.0, 1.0, 10.0])  # scores 4, 3, 2, 5
    assert wina_mask(x, norms, 2).tolist() == [[True, False, False, True]]
    assert wina_keep_count(0.5, 4) == 2 and wina_keep_count(0.99, 4) == 1
    with pytest.raises(ConfigError, match="sparsity"):
        wina_keep_count(1.0, 4)


def test_skipped_multiply_adds_equal_the_closed_form() -> None:
    """fc1 = identity, ReLU: token t has exactly p_t hidden units >= the threshold, so CHESS skips
    (H - p_t) * D_out per token; the union gather executes the |union| columns for every token, the per-token one
    exactly the active ones."""
    D, Dout, T = 8, 5, 4
    mlp = Mlp(D, D, Dout, "relu").eval()
    with torch.no_grad():
        mlp.fc1.weight.copy_(torch.eye(D))
        mlp.fc1.bias.zero_()
    p = [1, 3, 0, 2]
    x = torch.full((T, D), -1.0)
    for t, k in enumerate(p):
        x[t, :k] = 2.0  # active: >= 1
        x[t, k:k + 1] = 0.5  # positive but below the threshold
    thr = torch.ones(D)
    for mode, run in (("union", (D - max(p)) * Dout * T), ("per-token", sum(D - k for k in p) * Dout)):
        s = SparseMlp(mlp, "chess", thresholds=thr, mode=mode).eval()
        with torch.no_grad():
            s(x)
        assert s.count.dense == T * (D * D + D * Dout)
        assert s.count.skipped == sum(D - k for k in p) * Dout
        assert s.count.skipped_run == run
    # WINA on a dense GELU MLP (no exact zeros): (D_in - K_in) * H + (H - K_h) * D_out per token
    g = _mlp("gelu", d=12, h=48)
    s = SparseMlp(g, "wina", sparsity=0.75, input_sparsity=0.5).eval()
    with torch.no_grad():
        s(_x(2, 3, 12))
    assert s.count.skipped == 6 * ((12 - 6) * 48 + (48 - 12) * 12)
    assert s.count.skipped_share == pytest.approx(((12 - 6) * 48 + (48 - 12) * 12) / (2 * 12 * 48))


def test_refusals_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="KAN"):
        SparseMlp(make_mlp("kan", 8, 16, 8, "silu"), "wina")
    with pytest.raises(ConfigError, match="NobleLinear"):
        SparseMlp(make_mlp("noble", 8, 16, 8, "gelu", rank=4), "wina")
    with pytest.raises(ConfigError, match=r"shape \[48\]"):
        SparseMlp(_mlp(), "chess", thresholds=torch.zeros(12))
    with pytest.raises(ConfigError, match="criterion"):
        SparseMlp(_mlp(), "teal")
    with pytest.raises(ConfigError, match="sparsity"):
        SparseMlp(_mlp(), "wina", sparsity=1.0)
    s = SparseMlp(_mlp(), "wina", sparsity=0.5)
    with pytest.raises(ConfigError, match="eval"):
        s.train()(_x(2, 12))
    with pytest.raises(DataError, match="D_in = 12"):
        s.eval()(_x(2, 13))
    with pytest.raises(ConfigError, match="no module named"):
        apply_to_encoder(_Two("gelu"), "wina", modules=["c"])
    with pytest.raises(ConfigError, match="no thresholds for MLP 'b'"):
        apply_to_encoder(_Two("gelu"), "chess", thresholds={"a": torch.zeros(48)}, modules=["a", "b"])


# ------------------------------------------------------------------ the shipped tiny models

def _eeg_batch(cfg: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, C = 2, 5
    chan_mask = torch.ones(B, C, dtype=torch.bool)
    chan_mask[1, -1] = False
    pos = torch.nn.functional.normalize(torch.randn(B, C, 3, generator=g), dim=-1) * 0.09
    return {"x": torch.randn(B, C, cfg.patch_size * 4, generator=g), "pos": pos, "chan_mask": chan_mask}


def _fmri_batch(cfg: Any) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(2, cfg.in_chans, *cfg.input_size, generator=torch.Generator().manual_seed(0))}


def _features(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model.forward_features(**batch)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(("recipe", "batch", "act", "expect"), [
    ("deeperbrain-tiny", _eeg_batch, "gelu", {"blocks.0.mlp", "blocks.1.mlp", "decoder_blocks.0.mlp"}),
    ("deeperbrain-tiny", _eeg_batch, "relu", {"blocks.0.mlp", "blocks.1.mlp", "decoder_blocks.0.mlp"}),
    ("slim-brain-tiny", _fmri_batch, "gelu", {"encoder.blocks.0.mlp", "target.blocks.3.mlp", "predictor.blocks.1.mlp"}),
])
def test_shipped_models_swap_exact_at_zero_and_equal_the_reference(recipe: str, batch: Any, act: str,
                                                                   expect: set[str]) -> None:
    r = load_recipe(recipe)
    torch.manual_seed(0)
    model = MODELS.get(r.model.name)(dataclasses.replace(r.model.config, activation=act)).eval()
    inputs = batch(r.model.config)
    names = mlp_names(model)
    assert expect <= set(names)
    with torch.no_grad():
        dense = _features(model, inputs)
        with apply_to_encoder(model, "wina", sparsity=0.0) as s:
            torch.testing.assert_close(_features(model, inputs), dense, rtol=1e-5, atol=1e-5)
            assert s.count().dense > 0
        thr = calibrate_chess(model, [inputs], 0.5, forward_fn=lambda m, b: _features(m, b))
        assert set(thr) < set(names) and all(".blocks." in f".{n}" for n in thr)  # forward_features: encoder only
        assert not any(n.startswith(("decoder", "target", "predictor")) for n in thr)
        with apply_channel_thresholds(model, {f"{n}.act": t for n, t in thr.items()}):
            ref = _features(model, inputs)
        for mode in MODES:
            with apply_to_encoder(model, "chess", thresholds=thr, mode=mode) as s:
                torch.testing.assert_close(_features(model, inputs), ref, rtol=1e-4, atol=1e-5)
                assert 0.3 < s.count().skipped / s.count().dense * 2 <= 1.0  # ~half of fc2's share (<= 1/2 of all)
        wina_ref = {f"{n}.fc2": 0.5 for n in names} | {f"{n}.fc1": 0.25 for n in names}
        with apply_wina(model, wina_ref):
            ref = _features(model, inputs)
        with apply_to_encoder(model, "wina", sparsity=0.5, input_sparsity=0.25):
            torch.testing.assert_close(_features(model, inputs), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(_features(model, inputs), dense)  # removed: dense again


def test_ultrasound_model_is_refused_with_a_clear_error() -> None:
    r = load_recipe("ultrasound-mtl-tiny")
    model = MODELS.get(r.model.name)(r.model.config)
    with pytest.raises(ConfigError, match=r"no transformer MLP .* model.mlp: mlp"):
        apply_to_encoder(model, "wina", sparsity=0.5)
