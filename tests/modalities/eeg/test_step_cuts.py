"""DeeperBrain's eager step with fewer ops (issue 16): each cut against the path it replaces, on the tiny model
and a batch with padded channels: values, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from foundation.data.masking import sample_keep
from foundation.errors import DataError
from foundation.kernels.packing import pack_visible
from foundation.modalities.eeg.model import DeeperBrain
from foundation.modalities.eeg.objective import DeeperBrainObjective, DeeperBrainObjectiveConfig
from tests.modalities.eeg._helpers import tiny_model_config
from tests.modalities.eeg.test_model import _batch


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = DeeperBrain(tiny_model_config())
    b = _batch()
    B, C = b["chan_mask"].shape
    P = b["x"].shape[-1] // model.config.patch_size
    keep, _ = sample_keep(model.valid_tokens(b["chan_mask"], P), 0.5)
    return model, b, keep, P


def _grads(model, out) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    g = torch.autograd.grad(out, list(params.values()), allow_unused=True)
    return {n: t for n, t in zip(params, g) if t is not None}


def _assert_grads(got, want):
    """Each gradient within 1e-5 of its norm: the cuts reorder float sums (and ATen's reductions split by thread
    count), so single elements near zero may differ by rounding; a wrong path differs by O(1)."""
    assert sorted(got) == sorted(want)
    for n in want:
        err = float((got[n] - want[n]).norm() / want[n].norm().clamp_min(1e-30))
        assert err <= 1e-5, f"{n}: gradients differ by {err:.2e} of their norm"


def test_visible_tokens_equal_packing_every_token():
    """Embedding only the visible patches gives the rows of embedding all and packing (bit-equal values)."""
    model, b, keep, P = _setup()
    x, pos, cm = b["x"], b["pos"], b["chan_mask"]
    plan, _ = model.mask_plans(cm, keep, P)
    got = model.visible_tokens(x, pos, cm, plan)
    want = pack_visible(model.tokens(x, pos, cm), plan)[0]
    assert got.shape == want.shape == (sum(k.numel() for k in keep), model.embed_dim)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    w = torch.randn_like(want)
    _assert_grads(_grads(model, (got * w).sum()), _grads(model, (want * w).sum()))
    # scaled input and a given channel code: the same tokens
    code = model.chan_enc(pos, cm)
    torch.testing.assert_close(model.visible_tokens(model.scale_input(x, cm), pos, cm, plan, scaled=True,
                                                    chan_code=code), got, rtol=0, atol=0)
    other, _ = model.mask_plans(cm[:2], keep[:2], P)
    with pytest.raises(DataError, match="PackPlan was made for"):
        model.visible_tokens(x, pos, cm, other)


def test_forward_equals_the_composition_it_replaces():
    """forward (channel code once, visible-only embedding, pre-scaled input) against forward_features + decode +
    predict_stats as composed before the cut: outputs and gradients."""
    model, b, keep, P = _setup(1)
    x, pos, cm = b["x"], b["pos"], b["chan_mask"]
    plans = model.mask_plans(cm, keep, P)
    recon, stats = model(x, pos, cm, keep, plans)
    packed, cu = model.forward_features(x, pos, cm, plans[0])
    ref_recon = model.decode(packed, plans, pos, cm, P)
    ref_stats = model.predict_stats(packed, cu, plans[0], pos, cm, P)
    torch.testing.assert_close(recon, ref_recon, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats, ref_stats, rtol=1e-6, atol=1e-7)
    wr, ws = torch.randn_like(recon), torch.randn_like(stats)
    _assert_grads(_grads(model, (recon * wr).sum() + (stats * ws).sum()),
                  _grads(model, (ref_recon * wr).sum() + (ref_stats * ws).sum()))
    s_recon, s_stats = model(model.scale_input(x, cm), pos, cm, keep, plans, scaled=True)
    assert torch.equal(s_recon, recon) and torch.equal(s_stats, stats)


def test_plans_from_the_visible_mask_equal_the_plans_from_sorted_keep_lists():
    model, b, keep, P = _setup(2)
    cm = b["chan_mask"]
    visible = torch.zeros(cm.shape[0], cm.shape[1] * P, dtype=torch.bool)
    for i, k in enumerate(keep):
        visible[i, k] = True
    for a, r in zip(model.mask_plans(cm, visible, P), model.mask_plans(cm, keep, P)):
        assert torch.equal(a.index, r.index) and torch.equal(a.cu, r.cu)
        assert (a.max_len, a.batch, a.tokens) == (r.max_len, r.batch, r.tokens)


def test_objective_prepare_plans_match_its_keep():
    model, b, _, P = _setup(3)
    prepared = DeeperBrainObjective(DeeperBrainObjectiveConfig()).prepare(model, b)
    want = model.mask_plans(b["chan_mask"], prepared["keep"], P)
    for a, r in zip(prepared["plans"], want):
        assert torch.equal(a.index, r.index) and torch.equal(a.cu, r.cu) and a.max_len == r.max_len
