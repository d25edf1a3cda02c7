"""Frozen probing, LLRD fine-tuning, band-power baseline and report on the tiny demo corpus."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from foundation.config import load_recipe
from foundation.data.splits import group_split
from foundation.errors import DataError
from foundation.finetune import FinetuneOptions, TaskModel, finetune_model, predict
from foundation.finetune.llrd import depths_by_order
from foundation.modalities.eeg.channels import template_positions
from foundation.modalities.eeg.dataset import EEGWindows
from foundation.modalities.eeg.demo_corpus import CLASSES
from foundation.modalities.eeg.downstream import REGIONS, band_power_features, encode_windows, frozen_probe, write_report
from foundation.modalities.eeg.model import DeeperBrain
from tests.modalities.eeg._helpers import tiny_data_config, tiny_model_config

BANDS = ((1.0, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 80.0))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    cfg = tiny_data_config(tmp_path_factory.mktemp("eeg-ds") / "cache")
    EEGWindows.prepare(cfg)
    return EEGWindows(cfg)


def test_band_power_features_match_welch_on_one_window(ds):
    X = band_power_features(ds, 200.0, BANDS)
    assert X.shape == (len(ds), len(REGIONS) * len(BANDS)) and torch.isfinite(X).all()
    item = ds[0]
    x = item["x"][item["chan_mask"]].numpy().astype(np.float64)
    f, p = signal.welch(x, fs=200.0, nperseg=200, axis=-1)
    alpha = p[:, (f >= 8) & (f < 13)].sum(-1)
    anchors = np.stack([template_positions()[r.upper()][1] for r in REGIONS])  # [R, 3]
    region = np.linalg.norm(item["pos"][item["chan_mask"]].numpy()[:, None] - anchors[None], axis=-1).argmin(1)
    oz = REGIONS.index("Oz")
    np.testing.assert_allclose(X[0, oz * len(BANDS) + 2], np.log(alpha[region == oz].mean() + 1e-12), rtol=1e-4)


def test_frozen_probe_on_subject_disjoint_split(ds):
    torch.manual_seed(0)
    X, y = encode_windows(DeeperBrain(tiny_model_config()), ds, batch_size=8)
    assert X.shape == (18, 32) and y.tolist() == ds.labels.tolist()
    tr, te = group_split(ds.subject_ids, 0.34, seed=0)
    assert not set(ds.subject_ids[tr]) & set(ds.subject_ids[te])
    res = frozen_probe(X, y, tr, te, kind="mlp", epochs=20)
    assert {"balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc"} <= set(res.metrics)
    with pytest.raises(DataError, match="label -1"):
        frozen_probe(X, torch.full_like(y, -1), tr, te)


def test_shared_finetune_with_layerwise_decay_changes_the_encoder_and_reports(ds, tmp_path):
    """Full fine-tuning of an in-memory encoder goes through the shared loop (foundation.finetune)."""
    torch.manual_seed(0)
    enc = DeeperBrain(tiny_model_config())
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    tr, te = group_split(ds.subject_ids, 0.34, seed=0)
    sub = lambda idx: torch.utils.data.Subset(ds, idx.tolist())  # noqa: E731
    recipe = load_recipe("deeperbrain-tiny-probe", ["train.steps=3", "train.warmup_steps=1",
                                                    "train.micro_batch_size=4", "train.progress_bar=false"])
    clf = TaskModel.for_encoder(enc, len(CLASSES))  # trains the encoder in place
    res = finetune_model(clf, sub(tr), sub(te), recipe, FinetuneOptions(method="full", lr_decay=0.5),
                         tmp_path / "ft", class_names=list(CLASSES))
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], enc.blocks[0].attn.qkv.weight)
    assert torch.equal(before["decoder_pred.weight"], enc.decoder_pred.weight)  # the decoder is frozen
    assert "decoder" in res["load_report"]
    prob, y = predict(clf, torch.utils.data.DataLoader(sub(te), batch_size=8))
    assert prob.shape == (len(te), 3) and torch.allclose(prob.sum(-1), torch.ones(len(te)))
    from foundation.eval.metrics import classification_metrics

    assert classification_metrics(y, prob) == pytest.approx(res["metrics"], abs=1e-6)  # the scored model is this one
    depths = depths_by_order(clf, "encoder.blocks")[0]  # what the full strategy decays by
    assert [depths[n] for n in ("encoder.patch_embed.weight", "encoder.blocks.1.mlp.fc1.weight",
                                "encoder.norm.weight")] == [0, 2, 3]
    md, png = write_report([{"features": "finetuned", **res["metrics"]}], tmp_path, y, prob.argmax(-1), CLASSES)
    assert "balanced_accuracy" in md.read_text() and png.stat().st_size > 0


def test_region_pooling_matches_a_per_window_loop(ds):
    torch.manual_seed(0)
    model = DeeperBrain(tiny_model_config()).eval()
    X, _ = encode_windows(model, ds, batch_size=5, pool="regions")
    assert X.shape == (len(ds), len(REGIONS) * 32)
    item = ds[4]
    n = int(item["chan_mask"].sum())
    with torch.no_grad():
        tok, _ = model.forward_features(item["x"][None, :n], item["pos"][None, :n])
    per_ch = tok.reshape(n, 4, 32).mean(1)  # channel-major tokens -> mean per channel
    anchors = torch.tensor(np.stack([template_positions()[r.upper()][1] for r in REGIONS]), dtype=torch.float32)
    region = torch.cdist(item["pos"][:n], anchors).argmin(1)
    oz = REGIONS.index("Oz")
    torch.testing.assert_close(X[4, oz * 32:(oz + 1) * 32], per_ch[region == oz].mean(0), atol=1e-5, rtol=1e-4)
