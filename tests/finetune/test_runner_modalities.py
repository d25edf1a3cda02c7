"""`run_finetune` with linear-probe, LoRA and full fine-tuning on one model of each modality's demo task.

DeeperBrain (dict inputs x/pos/chan_mask, packed token output), SLIM-Brain (a 4D volume; JEPA predictor and
EMA target unused) and the ultrasound EfficientNet (FPN and task heads unused, batch norms), each a fresh tiny
model saved with ``save_pretrained`` and fine-tuned on a small demo corpus through the shipped ``*-probe`` recipes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from foundation.config import dataclass_to_dict, load_recipe
from foundation.finetune.features import split_batch
from foundation.finetune.runner import FinetuneOptions, _load_base, _split, run_finetune
from foundation.finetune.task_model import TaskModel, predict
from foundation.registry import DATASETS, MODELS

pytestmark = pytest.mark.slow
TRAIN = ["train.steps=4", "train.warmup_steps=1", "train.micro_batch_size=4", "train.progress_bar=false"]


def _eeg(tmp: Path) -> tuple[list[str], object]:
    from foundation.modalities.eeg.model import DeeperBrain, DeeperBrainConfig

    data = [f"data.cache_dir={tmp / 'eeg-cache'}", "data.demo.n_subjects=4", "data.demo.blocks_per_class=1"]
    cfg = DeeperBrainConfig(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, decoder_dim=8, decoder_depth=1,
                            decoder_heads=2)
    return ["deeperbrain-tiny-probe", *data], DeeperBrain(cfg)


def _fmri(tmp: Path) -> tuple[list[str], object]:
    from foundation.modalities.fmri.slim_brain import SlimBrain, SlimBrainConfig

    data = [f"data.cache_dir={tmp / 'fmri-cache'}", "data.demo_subjects=8", "data.demo_frames=48", "data.top_k=2"]
    fields = dataclass_to_dict(load_recipe("slim-brain-tiny").model.config)
    cfg = SlimBrainConfig(**{**fields, "embed_dim": 8, "stages": (1, 1, 1), "predictor_dim": 16, "predictor_depth": 1})
    return ["slim-brain-tiny-probe", *data], SlimBrain(cfg)


def _ultrasound(tmp: Path) -> tuple[list[str], object]:
    from foundation.modalities.ultrasound.model import (
        UltrasoundMTL,
        UltrasoundMTLConfig,
    )

    data = [f"data.cache_dir={tmp / 'us-cache'}", "data.demo_images_per_task=16"]  # source: demo, beside the cache
    cfg = UltrasoundMTLConfig(backbone="tinynet_e", fpn_dim=16, head_dim=8, tasks=("breast_3cls", "lung"))
    return ["ultrasound-mtl-tiny-probe", *data], UltrasoundMTL(cfg)


MODALITIES = {"eeg": _eeg, "fmri": _fmri, "ultrasound": _ultrasound}
# the parts of each checkpoint that forward_features never reaches (pretraining-only or other tasks' heads)
UNUSED = {"eeg": ("encoder.decoder", "encoder.mask_token", "encoder.stats_"),
          "fmri": ("encoder.target.", "encoder.predictor."), "ultrasound": ("encoder.fpn.", "encoder.heads.")}


@pytest.fixture(scope="module", params=list(MODALITIES))
def setup(request, tmp_path_factory):
    """(modality, recipe, checkpoint folder, test split) with a fresh tiny model saved as the base."""
    tmp = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    (name, *data), model = MODALITIES[request.param](tmp)
    recipe = load_recipe(name, data + TRAIN)
    base = tmp / "base"
    model.save_pretrained(base)
    ds_cls = DATASETS.get(recipe.data.name)
    if hasattr(ds_cls, "prepare"):
        ds_cls.prepare(recipe.data.config)
    dataset = ds_cls(recipe.data.config)
    train, test, _ = _split(dataset, FinetuneOptions(method="full"), "classification")  # the runner's held-out split
    return request.param, recipe, base, test, train


def _checkpoint(recipe, base: Path) -> dict[str, torch.Tensor]:
    return MODELS.get(recipe.model.name).from_pretrained(base).state_dict()


def test_load_is_strict_and_freezes_only_the_unreached_parts(setup):
    modality, recipe, base, _, train = setup
    model, report = _load_base(recipe, str(base), None, train.dataset.num_classes, "classification", "mean")
    unused = model.freeze_unused(split_batch(next(iter(DataLoader(train, batch_size=2))))[0])  # as finetune_model does
    ckpt = _checkpoint(recipe, base)
    state = model.encoder.state_dict()
    assert state.keys() == ckpt.keys() and all(torch.equal(state[k], ckpt[k]) for k in ckpt)
    assert unused and all(n.startswith(UNUSED[modality]) for n in unused), unused
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(unused) | {n for n, p in model.named_parameters() if n.startswith("encoder.target.")}
    assert "strictly" in report and "head.weight" in report
    assert model.blocks_path() is not None  # layer-wise LR decay has a block stack to decay over


@pytest.mark.parametrize("method", ["linear-probe", "mlp-probe", "lora", "dopamine", "full"])
def test_method_end_to_end(setup, method, tmp_path):
    modality, recipe, base, test, _ = setup
    res = run_finetune(recipe, str(base), tmp_path, FinetuneOptions(method=method))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["method"] == method and saved["metrics"] == res["metrics"]
    assert 0.0 <= res["metrics"]["balanced_accuracy"] <= 1.0 and (tmp_path / "confusion_matrix.png").is_file()
    C = test.dataset.num_classes
    ckpt = _checkpoint(recipe, base)
    if method.endswith("-probe"):
        head = load_file(tmp_path / "probe_head.safetensors")
        assert res["trainable_params"] == sum(t.numel() for t in head.values())
        return
    if method in ("lora", "dopamine"):
        folder = tmp_path / "adapter"
        adapter = load_file(folder / "adapter_model.safetensors")
        # only the adapter and the new head trained; the head is inside the adapter file (modules_to_save)
        head = "base_model.model.head." if method == "lora" else "head."
        assert adapter[head + "weight"].shape[0] == C
        trained = {k: t for k, t in adapter.items() if "lora_" in k or "dopamine_" in k or k.startswith(head)}
        assert res["trainable_params"] == sum(t.numel() for t in trained.values())
        assert not any(k.split("encoder.", 1)[1].startswith(tuple(u.split(".", 1)[1] for u in UNUSED[modality]))
                       for k in trained if "encoder." in k), sorted(trained)
        # LoRA: peft also keeps (frozen, unchanged) copies of modules whose names end in "head"
        ckpt_full = {f"base_model.model.encoder.{k}": v for k, v in ckpt.items()}
        assert all(torch.equal(t, ckpt_full[k]) for k, t in adapter.items() if k not in trained)
        saved_cfg = json.loads((folder / "config.json").read_text())
        assert saved_cfg["model_name"] == "task-model" and saved_cfg["base_model"] == str(base.resolve())
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
        if method == "lora":
            assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B starts at zero
        else:  # the gates trained, and the report ran on the held-out split
            assert any((t != -1.0).any() for k, t in adapter.items() if k.endswith("dopamine_tau"))
            assert (tmp_path / "attribution" / "attribution.png").is_file()
        # the folder alone (config + adapter + head) and the untouched checkpoint reproduce the run's test outputs
        import foundation

        rebuilt = foundation.load(folder)
        if method == "lora":  # plain peft reads the same folder onto the task model foundation.load builds
            from peft import PeftModel

            plain = PeftModel.from_pretrained(foundation.load(folder, adapter=False), str(folder)).eval()
            with torch.no_grad():
                prob_peft, _ = predict(plain, DataLoader(test, batch_size=64))
                prob_ours, _ = predict(rebuilt, DataLoader(test, batch_size=64))
            torch.testing.assert_close(prob_peft, prob_ours)
    else:
        rebuilt = TaskModel.from_pretrained(tmp_path / "model")
        enc = rebuilt.encoder.state_dict()
        changed = [k for k in ckpt if not torch.equal(enc[k], ckpt[k])]
        assert any(".blocks." in k or k.startswith("blocks.") for k in changed)  # the encoder trained
        assert not [k for k in changed if f"encoder.{k}".startswith(UNUSED[modality])]  # unreached parts did not
    prob, y = predict(rebuilt, DataLoader(test, batch_size=64))
    from foundation.eval.metrics import classification_metrics

    assert classification_metrics(y, prob) == pytest.approx(res["metrics"], abs=1e-5)
