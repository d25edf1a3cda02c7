"""One contract, applied to LoRA (peft) and Dopamine on toy and timm models.

Table rows: (case, toy model, method, config kwargs). Every row must: start as an exact identity; leave only
adapter parameters trainable; survive a save/load round trip with identical outputs; bypass to the base model
under disable and come back after; refuse a bad target before touching the model.
"""
from __future__ import annotations

import pytest
import torch

from foundation.adapters import DopamineConfig, LoraAdapterConfig
from foundation.errors import ConfigError
from tests.adapters._helpers import clone, dopamine_method, lora_method, make_model

CASES = [
    ("lora-toy", "toy", lora_method, dict(preset="custom", target_modules=("mlp.fc1", "mlp.fc2"), r=2)),
    ("lora-vit", "vit", lora_method, dict(preset="attention-mlp", r=4)),
    ("lora-conv", "conv", lora_method, dict(preset="pointwise", r=2)),
    ("lora-suite", "suite", lora_method, dict(preset="attention-mlp", r=2)),
    ("dopamine-toy", "toy", dopamine_method, dict(target_modules=("mlp.fc1",), skip_modules=("mlp.fc2",))),
    ("dopamine-vit", "vit", dopamine_method, dict()),
    ("dopamine-suite", "suite", dopamine_method, dict()),
]
CONFIGS = {lora_method: LoraAdapterConfig, dopamine_method: DopamineConfig}
IDS = [c[0] for c in CASES]


def _build(kind, factory, kwargs):
    base, x = make_model(kind)
    return base, x, factory(CONFIGS[factory](**kwargs))


@pytest.mark.parametrize("case,kind,factory,kwargs", CASES, ids=IDS)
def test_starts_as_exact_identity(case, kind, factory, kwargs):
    base, x, method = _build(kind, factory, kwargs)
    with torch.no_grad():
        expected = base(x)
    wrapped = method.inject(base)
    with torch.no_grad():
        wrapped.eval()
        torch.testing.assert_close(wrapped(x), expected, rtol=0, atol=0)
        wrapped.train()
        torch.testing.assert_close(wrapped(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("case,kind,factory,kwargs", CASES, ids=IDS)
def test_only_adapter_parameters_train(case, kind, factory, kwargs):
    base, x, method = _build(kind, factory, kwargs)
    wrapped = method.inject(base)
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert names and all(method.marker in n for n in names)
    wrapped.train()
    wrapped(x).square().sum().backward()
    assert all(p.grad is None for n, p in wrapped.named_parameters() if method.marker not in n)
    # one optimizer step moves the output (the adapter is wired in, not dead)
    with torch.no_grad():
        before = wrapped(x)
    if method.name == "dopamine":
        wrapped.set_step(wrapped.config.warmup_steps)
    opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        wrapped(x).square().sum().backward()
        opt.step()
    with torch.no_grad():
        assert not torch.equal(wrapped(x), before)


@pytest.mark.parametrize("case,kind,factory,kwargs", CASES, ids=IDS)
def test_save_load_round_trip(case, kind, factory, kwargs, tmp_path):
    base, x, method = _build(kind, factory, kwargs)
    pristine = clone(base)
    wrapped = method.inject(base)
    method.perturb(wrapped)
    wrapped.eval()
    with torch.no_grad():
        expected = wrapped(x)
        assert not torch.equal(expected, pristine(x))
    method.save(wrapped, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir() if p.suffix in {".json", ".safetensors"}) == [
        "adapter_config.json", "adapter_model.safetensors"]
    loaded = method.load(pristine, tmp_path / "adapter")
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("case,kind,factory,kwargs", CASES, ids=IDS)
def test_disable_then_enable(case, kind, factory, kwargs):
    base, x, method = _build(kind, factory, kwargs)
    pristine = clone(base)
    wrapped = method.inject(base)
    method.perturb(wrapped)
    wrapped.eval()
    with torch.no_grad():
        adapted = wrapped(x)
        with method.disabled(wrapped):
            torch.testing.assert_close(wrapped(x), pristine(x), rtol=0, atol=0)
        torch.testing.assert_close(wrapped(x), adapted, rtol=0, atol=0)


# A pattern list where the first pattern matches and a later one hits a module the method cannot wrap: the
# check must fail before the first match is wrapped (no half-wrapped model).
HALF = {
    "toy": ("mlp.fc1", "mlp.act"),
    "vit": ("mlp.fc1", "mlp.act"),
    "conv": ("conv_pw", "conv_dw"),
    "suite": ("mlp.fc1", "attn.proj_drop"),
}


@pytest.mark.parametrize("case,kind,factory,kwargs", CASES, ids=IDS)
def test_bad_target_refused_before_mutation(case, kind, factory, kwargs):
    base, _, _ = _build(kind, factory, kwargs)
    before = [(n, type(m)) for n, m in base.named_modules()]
    flags = [p.requires_grad for p in base.parameters()]
    if factory is lora_method:
        missing = LoraAdapterConfig(preset="custom", target_modules=("missing_a", "missing_b"), r=2)
        half = LoraAdapterConfig(preset="custom", target_modules=HALF[kind], r=2)
    else:
        missing = DopamineConfig(target_modules=("missing_a", "missing_b"))
        half = DopamineConfig(target_modules=HALF[kind], skip_modules=())
    with pytest.raises(ConfigError, match=r"missing_a.*missing_b.*matched no module"):
        factory(missing).inject(base)
    with pytest.raises(ConfigError, match=rf"{HALF[kind][1].split('.')[-1]}.*(expected one of|grouped)"):
        factory(half).inject(base)
    assert [(n, type(m)) for n, m in base.named_modules()] == before
    assert [p.requires_grad for p in base.parameters()] == flags


@pytest.mark.parametrize("kind,config", [
    ("toy", LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1", "mlp.fc2"), r=2)),
    ("vit", LoraAdapterConfig(preset="attention-mlp", r=4)),
    ("conv", LoraAdapterConfig(preset="pointwise", r=2)),
], ids=["toy", "vit", "conv"])
def test_lora_merge_keeps_outputs(kind, config):
    from foundation.adapters import LoraAdapterModel

    base, x = make_model(kind)
    wrapped = LoraAdapterModel.inject(base, config)
    lora_method(config).perturb(wrapped)
    wrapped.eval()
    with torch.no_grad():
        expected = wrapped(x)
    merged = wrapped.merge()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,target", [("toy", "blocks.0.mlp.fc1"), ("vit", "blocks.1.mlp.fc1")], ids=["toy", "vit"])
def test_dopamine_hard_gate_matches_reference(kind, target):
    """Eval output == base model with a hook applying gamma * 1[h > tau] * h on every gated layer."""
    config = DopamineConfig(target_modules=("mlp.fc1",), skip_modules=("mlp.fc2",))
    base, x = make_model(kind)
    reference = clone(base)
    wrapped = dopamine_method(config).inject(base)
    dopamine_method(config).perturb(wrapped)
    wrapped.eval()
    layers = dict(wrapped.dopamine_layers())
    hooks = []
    for name, layer in layers.items():
        tau, gamma = layer.dopamine_tau["default"].detach(), layer.dopamine_gamma["default"].detach()
        hooks.append(reference.get_submodule(name).register_forward_hook(
            lambda _m, _i, h, tau=tau, gamma=gamma: gamma * (h > tau).to(h.dtype) * h))
    with torch.no_grad():
        expected = reference(x)
        got = wrapped(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert target in layers
    # the hard gate really zeroes some units on this input, so the test is not vacuous
    fired = []
    layers[target].recorded = fired
    with torch.no_grad():
        wrapped(x)
    layers[target].recorded = None
    assert 0.0 < float(torch.cat(fired).mean()) < 1.0
