"""The multi-task model: every head and the FPN get gradients and train, routing, LR groups, weights, Hub."""
from __future__ import annotations

import pytest
import torch

from foundation.config import TrainConfig
from foundation.errors import CheckpointError, ConfigError
from foundation.modalities.ultrasound.model import UltrasoundMTL
from foundation.modalities.ultrasound.objective import MultiTaskObjective, MultiTaskObjectiveConfig
from foundation.pretrain.components import TrainModule
from foundation.pretrain.optim import build_optimizer
from tests.modalities.ultrasound._batches import mixed_batch
from tests.modalities.ultrasound._helpers import TASKS, model_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UltrasoundMTL(model_config())


def test_every_head_and_the_fpn_receive_gradients(model):
    model.zero_grad()
    obj = MultiTaskObjective(MultiTaskObjectiveConfig(tasks=TASKS))
    loss, metrics = obj(model, mixed_batch())
    loss.backward()
    assert float(metrics["tasks_in_batch"]) == len(TASKS)
    for name, part in [("fpn", model.fpn), ("backbone", model.backbone), *model.heads.items()]:
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_routing_and_shapes(model):
    b = mixed_batch()
    out = model(b["image"], b["task"])
    assert list(out) == list(TASKS)
    rows, seg = out["cardiac_multi"]
    assert rows.tolist() == [8, 9] and seg.shape == (2, 4, 64, 64)
    assert out["breast_2cls"][1].shape == (2, 2) and out["FUGC"][1]["points"].shape == (2, 2, 2)
    box = out["thyroid_nodule_det"][1]["box"]
    assert box.shape == (2, 4) and (box[:, 2:] >= box[:, :2]).all()
    # classification reads the deepest map only: changing the FPN changes segmentation, not class logits
    model.eval()
    with torch.no_grad():
        before = model(b["image"], b["task"])
        model.fpn.smooth[0].weight.add_(1.0)
        after = model(b["image"], b["task"])
        model.fpn.smooth[0].weight.sub_(1.0)
    assert torch.equal(before["breast_2cls"][1], after["breast_2cls"][1])
    assert not torch.allclose(before["fetal_head"][1], after["fetal_head"][1])
    tokens = model.forward_features(b["image"][:2])
    assert tokens.shape == (2, 4, model.embed_dim)
    with pytest.raises(ConfigError, match="keep is not supported"):
        model.forward_features(b["image"][:2], keep=torch.zeros(2, 1, dtype=torch.long))
    model.train()


def test_fpn_is_in_the_optimizer_and_its_weights_change():
    torch.manual_seed(1)
    model = UltrasoundMTL(model_config(task_lr_scales={"FUGC": 2.0}))
    obj = MultiTaskObjective(MultiTaskObjectiveConfig(tasks=TASKS))
    train = TrainConfig(lr=1e-3, steps=10, warmup_steps=0)
    opt = build_optimizer(TrainModule(model, obj), train)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["members"]}
    assert lrs["backbone.decay"] == pytest.approx(1e-3) and lrs["fpn.decay"] == pytest.approx(1e-2)
    assert lrs["head.cardiac_multi.decay"] == pytest.approx(1e-2) and lrs["head.FUGC.decay"] == pytest.approx(2e-2)
    fpn_ids = {id(p) for p in model.fpn.parameters()}
    assert fpn_ids <= {id(p) for g in opt.param_groups for p in g["params"]}
    before = [p.detach().clone() for p in model.fpn.parameters()]
    for step in range(2):
        loss, _ = obj(model, mixed_batch(seed=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.fpn.parameters()))


def test_pretrained_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    full = timm.create_model("tinynet_e", pretrained=False)
    path = tmp_path / "tinynet_e.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    model = UltrasoundMTL(model_config(pretrained=str(path)))
    ref = full.state_dict()
    got = model.backbone.state_dict()
    assert got and all(torch.equal(v, ref[k]) for k, v in got.items())
    fresh = UltrasoundMTL(model_config())
    assert not torch.equal(fresh.backbone.state_dict()["conv_stem.weight"], ref["conv_stem.weight"])
    with pytest.raises(CheckpointError, match="not found"):
        UltrasoundMTL(model_config(pretrained=str(tmp_path / "missing.safetensors")))


def test_hub_round_trip_and_layer_library_activation(tmp_path, model):
    model.save_pretrained(tmp_path / "export")
    again = UltrasoundMTL.from_pretrained(tmp_path / "export")
    b = mixed_batch()
    model.eval()
    again.eval()
    with torch.no_grad():
        a, c = model(b["image"], b["task"]), again(b["image"], b["task"])
    assert torch.allclose(a["fetal_head"][1], c["fetal_head"][1])
    model.train()
    gelu = UltrasoundMTL(model_config(act_layer="gelu"))
    assert any(isinstance(m, torch.nn.GELU) for m in gelu.backbone.modules())
    assert any(isinstance(m, torch.nn.GELU) for m in gelu.heads["fetal_head"].modules())


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown timm model 'efficientnet_b44'"):
        UltrasoundMTL(model_config(backbone="efficientnet_b44"))
    tagged = UltrasoundMTL(model_config(backbone="tinynet_e.in1k"))  # a pretrained tag names the same model
    assert sum(p.numel() for p in tagged.parameters()) == sum(p.numel() for p in UltrasoundMTL(model_config()).parameters())
    with pytest.raises(ConfigError, match="task_lr_scales.lunk: unknown task"):
        model_config(task_lr_scales={"lunk": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'gelu'"):
        UltrasoundMTL(model_config(act_layer="gelü"))


def test_bf16_parameters_with_fp32_norm_buffers_get_a_clear_error():
    model = UltrasoundMTL(model_config())
    assert not any(k.startswith("_first_norm") for k in model.state_dict())
    for p in model.parameters():
        p.data = p.data.bfloat16()  # what DeepSpeed's bf16 mode does without data_types.buffer_dtype
    with pytest.raises(ConfigError, match="buffer_dtype: bf16"):
        model.features(torch.rand(1, 3, 32, 32).bfloat16())
    model.bfloat16()  # buffers too: runs
    deep, fpn = model.features(torch.rand(2, 3, 64, 64).bfloat16())
    assert deep.dtype == fpn.dtype == torch.bfloat16
