"""Every fine-tuning method on every imported architecture: the LoRA and Dopamine presets find each model's layers
and start as an exact identity with a trainable update; layer-wise LR decay finds each block stack; the probes'
frozen features pool to ``[B, D]``."""
from __future__ import annotations

import warnings

import pytest
import torch

from foundation.adapters import get_adapter
from foundation.finetune.features import pool_tokens
from foundation.finetune.task_model import TaskModel
from foundation.registry import MODELS

warnings.filterwarnings("ignore", category=UserWarning, module="braindecode")

SIZES = {
    "labram": ({"num_layers": 2, "num_heads": 4}, 400, "net.blocks"),
    "cbramod": ({"n_layer": 2, "dim_feedforward": 32}, 400, "net.encoder.layers"),
    "eegpt": ({"embed_dim": 16, "embed_num": 1, "depth": 2, "num_heads": 2, "patch_size": 64}, 512,
              "net.target_encoder.blocks"),
    "biot": ({"embed_dim": 32, "num_layers": 2, "num_heads": 2}, 400, "net.encoder.transformer.layers.layers"),
    "bendr": ({"encoder_h": 16, "contextualizer_hidden": 32, "transformer_layers": 2, "transformer_heads": 4}, 512,
              "net.contextualizer.transformer_layers"),
}


def _task_model(arch: str) -> tuple[TaskModel, torch.Tensor]:
    torch.manual_seed(0)
    cls = MODELS.get(arch)
    kwargs, n_times, _ = SIZES[arch]
    encoder = cls(cls.config_class(n_times=n_times, kwargs=kwargs))
    model = TaskModel.for_encoder(encoder, num_outputs=3).eval()
    x = torch.randn(4, encoder.n_chans, n_times, generator=torch.Generator().manual_seed(1))
    return model, x


@pytest.mark.parametrize("arch", sorted(SIZES))
@pytest.mark.parametrize("method", ["lora", "dopamine"])
def test_adapter_presets_wrap_each_architecture_as_an_identity(arch, method):
    model, x = _task_model(arch)
    with torch.no_grad():
        before = model(x)
    cls = get_adapter(method)
    fields = {"modules_to_save": ("head",)} if method == "lora" else {}
    config = cls.config_for(arch, (), ("head",), fields)
    wrapped = cls(model, config)
    names = [n for n, _ in wrapped.adapter_parameters()]
    blocks = SIZES[arch][2]
    assert names and all(blocks in n or ".head." in n or n.startswith("head") or "modules_to_save" in n
                         for n in names if "lora_" in n or "gate" in n or "threshold" in n)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), before, rtol=0, atol=1e-6)
    assert wrapped.num_trainable() > 0


@pytest.mark.parametrize("arch", sorted(SIZES))
def test_layerwise_lr_decay_finds_the_block_stack(arch):
    model, _ = _task_model(arch)
    path = model.blocks_path()
    assert path == f"encoder.{SIZES[arch][2]}"
    groups = model.llrd_groups(1e-3, decay=0.5, head_lr=1e-2, weight_decay=0.05)
    n = len(model.get_submodule(path))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    first = next(p for name, p in model.named_parameters() if name.startswith(f"{path}.0."))
    last = next(p for name, p in model.named_parameters() if name.startswith(f"{path}.{n - 1}."))
    assert lr_of[id(first)] == pytest.approx(1e-3 * 0.5 ** n) and lr_of[id(last)] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(model.head.weight)] == pytest.approx(1e-2)


@pytest.mark.parametrize("arch", sorted(SIZES))
def test_probe_features_pool_to_one_vector_per_window(arch):
    model, x = _task_model(arch)
    with torch.no_grad():
        feats = pool_tokens(model.forward_features(x), "mean")
    assert feats.shape == (4, model.encoder.embed_dim) and torch.isfinite(feats).all()
    assert (feats[0] - feats[1]).abs().max() > 0  # different windows, different features
