"""Relevance patching, layer activity with skipping, deletion curves, ultrasound overlays (on the shipped models)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.explain.activity import (
    layer_activity,
    plot_activity,
    residual_units,
    skip_layers,
    skip_report,
)
from foundation.explain.deletion import area_between, deletion_curve
from foundation.explain.relp import component_effects, logits, patching_study


def _eeg_model():
    from foundation.finetune.task_model import TaskModel
    from foundation.modalities.eeg.model import DeeperBrain, DeeperBrainConfig

    torch.manual_seed(0)
    enc = DeeperBrain(DeeperBrainConfig(embed_dim=16, depth=3, num_heads=2, mlp_ratio=2.0, decoder_dim=8,
                                        decoder_depth=1, decoder_heads=2))
    return TaskModel.for_encoder(enc, 3).eval()


def _window(seed: int, C: int = 5):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(C, 400, generator=g), "pos": torch.randn(C, 3, generator=torch.Generator().manual_seed(9)) * 0.05,
            "chan_mask": torch.ones(C, dtype=torch.bool)}


def test_dense_restatement_equals_the_model_and_patching_is_consistent():
    model = _eeg_model()
    w = _window(0)
    w["chan_mask"][-1] = False
    ref = model({k: v[None] for k, v in w.items()})[0]
    torch.testing.assert_close(logits(model, w["x"], w["pos"], w["chan_mask"]), ref, rtol=1e-5, atol=1e-6)
    same = component_effects(model, w, w, 0, 1)  # clean == corrupted: nothing to patch
    assert same.activation.tolist() == [0.0] * len(same.names) and not same.attribution.any() and not same.relp.any()
    H, hidden, depth = 2, 32, 3
    assert len(same.names) == depth * (H + hidden)
    clean, corrupt = _window(1), _window(2)
    res = component_effects(model, clean, corrupt, 0, 2)
    assert res.names[:2] == ["L0.head0", "L0.head1"] and res.activation.any()
    stats = patching_study(model, [(clean, corrupt, 0, 2), (corrupt, clean, 2, 0)])
    assert stats["n_components"] == len(res.names) and stats["n_pairs"] == 2
    assert -1 <= stats["pearson_relp"] <= 1 and stats["pearson_atp"] > 0.5  # a small random encoder is near-linear


def test_relp_refuses_windows_of_different_channels():
    model = _eeg_model()
    a, b = _window(0), _window(1)
    b["chan_mask"][0] = False
    with pytest.raises(ConfigError, match="must share their channels"):
        component_effects(model, a, b, 0, 1)


def test_layer_activity_sees_an_idle_block_and_skipping_it_costs_nothing(tmp_path):
    model = _eeg_model()
    idle = model.encoder.blocks[1]
    for lin in (idle.attn.proj, idle.mlp.fc2):  # the block adds exactly zero to the residual stream
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
    batches = [{k: torch.stack([_window(s)[k] for s in range(b, b + 3)]) for k in ("x", "pos", "chan_mask")}
               for b in (0, 3)]
    rows = layer_activity(model, batches, threshold=0.05)
    names = [r["layer"] for r in rows]
    assert names == ["encoder.blocks.0", "encoder.blocks.1", "encoder.blocks.2"]
    assert rows[1]["active_share"] == 0.0 and rows[1]["mean_change"] == 0.0 and rows[1]["n_inputs"] == 6
    assert rows[0]["mean_change"] > 0
    labels = [torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0])]
    with torch.no_grad():
        before = model(batches[0])
        with skip_layers(model, ["encoder.blocks.1"]):
            assert type(model.encoder.blocks[1]).__name__ == "_Skip"
            torch.testing.assert_close(model(batches[0]), before)
    assert model.encoder.blocks[1] is idle  # restored
    report = skip_report(model, list(zip(batches, labels)), rows, thresholds=(0.5,), repeats=1)
    assert report[1]["skipped"] == 1 and report[1]["accuracy"] == report[0]["accuracy"]
    with pytest.raises(ConfigError, match="not residual units"):
        with skip_layers(model, ["encoder.norm"]):
            pass
    png = plot_activity(tmp_path / "act.png", rows, 0.05)
    assert png.stat().st_size > 3000


def test_residual_units_of_the_other_shipped_models():
    from foundation.config import dataclass_to_dict, load_recipe
    from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig
    from foundation.modalities.ultrasound.model import (
        UltrasoundMTL,
        UltrasoundMTLConfig,
    )

    fields = dataclass_to_dict(load_recipe("slim-brain-tiny").model.config)
    slim = SlimBrain(SlimBrainConfig(**{**fields, "embed_dim": 8, "stages": (2, 1, 1), "predictor_dim": 16,
                                        "predictor_depth": 1}))
    units = [n for n, _ in residual_units(slim)]
    assert units == ["encoder.blocks.0", "encoder.blocks.1"]  # the width-changing pooling blocks are no residual units
    us = UltrasoundMTL(UltrasoundMTLConfig(backbone="tinynet_e", fpn_dim=16, head_dim=8, tasks=("lung",)))
    units = residual_units(us)
    assert units and all(m.has_skip for _, m in units)
    x = torch.rand(2, 3, 64, 64)
    rows = layer_activity(us.eval(), [x], forward=lambda b: us.features(b))
    assert len(rows) == len(units) and all(r["n_inputs"] == 2 for r in rows)


def test_deletion_curve_of_the_right_ranking_drops_first():
    w = torch.zeros(20)
    w[3] = 1.0

    def net(x: torch.Tensor, _sl: slice) -> torch.Tensor:  # class 1 iff unit 3 is on
        s = x @ w
        return torch.stack([0.5 - s, s - 0.5], 1)

    x = torch.ones(20, 20)
    y = torch.ones(20, dtype=torch.long)
    valid = torch.ones(20, 20, dtype=torch.bool)
    right = torch.zeros(20, 20)
    right[:, 3] = 1
    rand = torch.rand(20, 20, generator=torch.Generator().manual_seed(0))
    remove = lambda xb, drop: xb * (~drop)
    good = deletion_curve(net, x, y, right, valid, remove)
    base = deletion_curve(net, x, y, rand, valid, remove)
    assert good[0] == 1.0 and good[1] == 0.0  # the first 5% (one unit) is the one that matters
    assert area_between(good, base) > 0.3


def test_ultrasound_overlays_and_segmentation_output(tmp_path):
    from foundation.explain.ultrasound import (
        SegmentationOutput,
        plot_overlays,
        pointing_game,
    )
    from foundation.modalities.ultrasound.model import (
        UltrasoundMTL,
        UltrasoundMTLConfig,
    )

    mtl = UltrasoundMTL(UltrasoundMTLConfig(backbone="tinynet_e", fpn_dim=16, head_dim=8,
                                            tasks=("breast_3cls", "lung"))).eval()
    seg = SegmentationOutput(mtl, "lung")
    x = torch.rand(2, 3, 64, 64)
    assert seg(x).shape == (2, 2, 64, 64)
    with pytest.raises(ConfigError, match="segmentation tasks: lung"):
        SegmentationOutput(mtl, "breast_3cls")
    masks = torch.zeros(2, 64, 64)
    masks[:, 10:20, 10:20] = 1
    maps = {"a": masks.clone(), "b": torch.rand(2, 64, 64)}
    assert pointing_game(maps["a"], masks) == (1.0, 2)
    assert pointing_game(maps["a"], torch.zeros(2, 64, 64))[1] == 0  # nothing to point at: not scored
    png = plot_overlays(tmp_path / "o.png", x, maps, ["one", "two"], masks)
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
