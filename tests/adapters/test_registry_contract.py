"""One contract for every registered adapter method on every shipped model's tiny recipe.

Parametrised over the adapter registry (``adapter_names()``, which includes the tests' own third method,
``scale``) and the three shipped models built from ``foundation/recipes/*-tiny.yaml`` under a task head,
adapters configured as the fine-tuning runner configures them (``config_for``; the new head and the parts
``forward_features`` does not reach excluded). Each pair: exact identity at step 0; only adapter parameters
train; save/load round trip with identical outputs; merge equality (or a clear refusal); disable gives the
base model back exactly. A pair the method cannot serve is listed in ``REFUSED`` and must refuse up front,
before the model is touched.
"""
from __future__ import annotations

import copy

import pytest
import torch

import tests.adapters._scale_adapter  # noqa: F401  (registers the third method "scale")
from foundation.adapters import adapter_names, get_adapter
from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.finetune.strategies.adapter import unused_modules
from foundation.finetune.task_model import TaskModel
from foundation.registry import MODELS

SHIPPED = {"deeperbrain": "deeperbrain-tiny", "slim-brain": "slim-brain-tiny", "ultrasound-mtl": "ultrasound-mtl-tiny"}
# the EfficientNet of ultrasound-mtl holds no nn.Linear on its feature path: the tests' scale method refuses it
# (Dopamine gates its 1x1 convolutions)
REFUSED = {("scale", "ultrasound-mtl")}
PAIRS = [(a, m) for a in adapter_names() for m in SHIPPED]


def _inputs(name: str, config) -> object:
    gen = torch.Generator().manual_seed(1)
    if name == "deeperbrain":
        C, T = 5, 2 * config.patch_size
        pos = torch.randn(2, C, 3, generator=gen) * 0.05
        mask = torch.tensor([[True] * C, [True] * (C - 2) + [False] * 2])
        return {"x": torch.randn(2, C, T, generator=gen), "pos": pos, "chan_mask": mask}
    if name == "slim-brain":
        return {"x": torch.randn(2, config.in_chans, *config.input_size, generator=gen)}
    return {"x": torch.randn(2, 3, 64, 64, generator=gen)}


def _setup(adapter: str, model_name: str):
    """(adapter class, task model, inputs, config as the runner builds it)."""
    recipe = load_recipe(SHIPPED[model_name])
    torch.manual_seed(0)
    encoder = MODELS.get(model_name)(recipe.model.config)
    model = TaskModel.for_encoder(encoder, 3).eval()
    x = _inputs(model_name, recipe.model.config)
    unused = model.freeze_unused(x)
    for p in model.parameters():  # as a pretrained checkpoint would be: everything trainable until adapted
        p.requires_grad_(True)
    cls = get_adapter(adapter)
    config = cls.config_for(model_name, (), ("head",) + unused_modules(model, unused), {})
    return cls, model, x, config


def _perturb(wrapped) -> None:
    """Leave the warm-up behind and move every adapter parameter off its identity value."""
    wrapped.on_step_end(10_000)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in wrapped.adapter_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)


def test_the_registry_holds_the_suite_methods_and_the_test_method():
    assert {"lora", "dopamine", "scale"} <= set(adapter_names())


@pytest.mark.parametrize("adapter,model_name", [p for p in PAIRS if p in REFUSED], ids="-".join)
def test_refused_pairs_refuse_before_mutation(adapter, model_name):
    cls, model, _, config = _setup(adapter, model_name)
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(ConfigError, match="matched no module"):
        cls(model, config)
    assert [(n, type(m)) for n, m in model.named_modules()] == before


@pytest.mark.parametrize("adapter,model_name", [p for p in PAIRS if p not in REFUSED], ids="-".join)
def test_contract(adapter, model_name, tmp_path):
    cls, model, x, config = _setup(adapter, model_name)
    pristine = copy.deepcopy(model)
    with torch.no_grad():
        base_out = model(x)
    wrapped = cls(model, config).eval()
    with torch.no_grad():  # exact identity at step 0
        torch.testing.assert_close(wrapped(x), base_out, rtol=0, atol=0)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(cls.marker in n for n in trainable)  # only the adapter trains
    assert not any(".head." in n for n in trainable)
    _perturb(wrapped)
    with torch.no_grad():
        adapted = wrapped(x)
    assert not torch.allclose(adapted, base_out)  # the adapter is wired in
    wrapped.save(tmp_path / "adapter")
    loaded = cls.load(copy.deepcopy(pristine), tmp_path / "adapter").eval()
    assert not any(p.requires_grad for _, p in loaded.adapter_parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), adapted, rtol=0, atol=0)
        with wrapped.disable_adapter():
            torch.testing.assert_close(wrapped(x), base_out, rtol=0, atol=0)
        torch.testing.assert_close(wrapped(x), adapted, rtol=0, atol=0)
    if cls.supports_merge:
        merged = wrapped.merge()
        assert not any(cls.marker in n for n, _ in merged.named_parameters())
        with torch.no_grad():
            torch.testing.assert_close(merged(x), adapted, rtol=1e-4, atol=1e-5)
    else:
        with pytest.raises(ConfigError, match=f"adapter method '{adapter}' cannot merge"):
            wrapped.merge()
        base = wrapped.unload()
        with torch.no_grad():
            torch.testing.assert_close(base(x), base_out, rtol=0, atol=0)
