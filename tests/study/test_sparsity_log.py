"""``train.sparsity_every``: the engine's activation-sparsity log on each shipped tiny model."""
from __future__ import annotations

import math

import pytest
import torch

from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.pretrain.engine import Engine
from foundation.pretrain.run_log import read_jsonl
from foundation.pretrain.sparsity_log import read_sparsity

pytestmark = pytest.mark.slow


def _run(tmp_path, recipe: str, name: str, *overrides: str) -> tuple[list[dict], list[dict] | None]:
    r = load_recipe(recipe, ["train.steps=4", "train.warmup_steps=1", "train.progress_bar=false",
                             f"data.cache_dir={tmp_path / 'cache' / recipe}", *overrides])
    out = tmp_path / name
    Engine(r, out).run()
    log = out / "sparsity.jsonl"
    return read_jsonl(out / "metrics.jsonl"), (read_sparsity(log) if log.is_file() else None)


def test_topk_share_is_the_closed_form_and_training_is_unchanged(tmp_path):
    """DeeperBrain with top-k ReLU (k = 10% of the hidden units): every token keeps ceil(0.1 H) values, so the
    exact-zero share of an MLP activation is at least 1 - ceil(0.1 H) / H (more where fewer are positive):
    H = 128 in the encoder (64 x 2), 64 in the decoder (32 x 2);
    the log does not change the run (its random numbers come from a forked generator)."""
    with_log, log = _run(tmp_path, "deeperbrain-tiny", "on", "model.activation=topk-relu", "train.sparsity_every=2")
    without, none = _run(tmp_path, "deeperbrain-tiny", "off", "model.activation=topk-relu")
    assert none is None
    assert [r["step"] for r in log] == [2, 4]
    enc = [n for n in log[0]["layers"] if n.startswith("model.blocks.")]
    assert enc == ["model.blocks.0.mlp.act", "model.blocks.1.mlp.act"]
    assert sorted(log[0]["layers"]) == [*enc, "model.decoder_blocks.0.mlp.act"]
    for rec in log:
        for name, s in rec["layers"].items():
            H = 64 if "decoder" in name else 128
            floor = 1 - math.ceil(0.1 * H) / H
            assert floor - 1e-9 <= s["zero_share"] <= 1.0, name
            assert s["near_zero_share"]["0.01"] >= s["zero_share"]  # zeros are near zero
    assert [r["loss"] for r in with_log] == [r["loss"] for r in without]


@pytest.mark.parametrize("recipe, override, layer", [
    ("slim-brain-tiny", "model.activation=gelu", "model.encoder.blocks.0.mlp.act"),
    ("ultrasound-mtl-tiny", "model.act_layer=relu", "model.backbone.bn1.act"),
])
def test_log_on_the_other_shipped_models(tmp_path, recipe, override, layer):
    _, log = _run(tmp_path, recipe, "run", override, "train.sparsity_every=4")
    assert [r["step"] for r in log] == [4]
    s = log[0]["layers"][layer]
    if "relu" in override:  # ReLU: the exact zeros are the non-positive pre-activations
        assert 0.0 < s["zero_share"] < 1.0
    else:  # GELU is zero only at 0 and -inf: no exact zeros, but a share near zero
        assert s["zero_share"] == 0.0 and 0.0 < s["near_zero_share"]["0.1"] < 1.0
    shares = [s["near_zero_share"][k] for k in ("0.001", "0.01", "0.05", "0.1")]
    assert shares == sorted(shares)  # a larger threshold counts at least as many


def test_negative_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="train.sparsity_every"):
        load_recipe("deeperbrain-tiny", ["train.sparsity_every=-1"])


def test_learnable_scalar_activations_start_under_deepspeed(tmp_path):
    """ProAct's lam (and CRReLU's eps, ASH's z_k) are 0-dim parameters that DeepSpeed's start-up broadcast
    refused; they now train and stay 0-dim."""
    r = load_recipe("deeperbrain-tiny", ["train.steps=2", "train.warmup_steps=1", "train.progress_bar=false",
                                         f"data.cache_dir={tmp_path / 'cache'}", "model.activation=proact"])
    eng = Engine(r, tmp_path / "run")
    eng.run()
    lam = eng.ds_engine.module.model.blocks[0].mlp.act.lam
    assert lam.dim() == 0 and torch.isfinite(lam)


def test_a_rank_that_does_not_write_measures_the_same_and_leaves_the_file_alone(tmp_path):
    """Every rank measures (a ZeRO-3 forward gathers parameters collectively, so all ranks must run it); only the
    writer touches ``sparsity.jsonl``."""
    from torch import nn

    from foundation.layers.create_act import make_activation
    from foundation.pretrain.sparsity_log import SparsityLog

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(8, 16), make_activation("relu")

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
            return self.act(self.fc(x)).mean(), {}

    torch.manual_seed(0)
    net, data = Net(), [torch.randn(8) for _ in range(4)]
    (tmp_path / "w").mkdir()
    (tmp_path / "r").mkdir()
    written = SparsityLog(tmp_path / "w", data, 4, seed=0, device=torch.device("cpu")).measure(net, 1)
    silent = SparsityLog(tmp_path / "r", data, 4, seed=0, device=torch.device("cpu"), writer=False).measure(net, 1)
    assert silent == written and written["layers"]["act"]["zero_share"] > 0
    assert not (tmp_path / "r" / "sparsity.jsonl").exists()
    assert read_sparsity(tmp_path / "w" / "sparsity.jsonl") == [written]


def test_two_ranks_write_one_line_per_measurement(tmp_path):
    """Two ranks at ZeRO-3 with the log on: the run finishes and rank 0 alone writes (one line per step). The tiny
    model's parameters are all below DeepSpeed's ZeRO-3 persistence threshold, so they stay whole and its forward
    runs no gather: the hang a rank-0-only measurement would cause on a real model is not reproduced here."""
    from tests.pretrain._launch import check, run_pretrain

    out = tmp_path / "run"
    check(run_pretrain(out, "train.steps=2", "train.warmup_steps=1", "train.sparsity_every=1",
                       "deepspeed.zero_stage=3", f"data.cache_dir={tmp_path / 'cache'}", ranks=2,
                       recipe="deeperbrain-tiny", extra=("--no-export",), timeout=300))
    log = read_sparsity(out / "sparsity.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["layers"] for r in log)
