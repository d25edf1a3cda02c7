"""Contract of every registered model: built from its tiny recipe, one forward, one backward, and a
``save_pretrained`` / ``from_pretrained`` round trip that reproduces the outputs bit for bit.

Parametrised over ``foundation.registry.MODELS``: registering a model without a case here fails
``test_every_registered_model_has_a_case``, so a new model is tested by being registered.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

from foundation.config import dataclass_to_dict, load_recipe
from foundation.errors import CheckpointError, DataError
from foundation.registry import MODELS

Inputs = Callable[[Any], dict[str, torch.Tensor]]


def _eeg_inputs(cfg: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, C, T = 2, 5, cfg.patch_size * 4
    chan_mask = torch.ones(B, C, dtype=torch.bool)
    chan_mask[1, -1] = False  # a padded channel in the second sample
    pos = torch.nn.functional.normalize(torch.randn(B, C, 3, generator=g), dim=-1) * 0.09
    return {"x": torch.randn(B, C, T, generator=g), "pos": pos, "chan_mask": chan_mask}


def _fmri_inputs(cfg: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(2, cfg.in_chans, *cfg.input_size, generator=g)}


def _us_inputs(cfg: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.rand(2, 3, 64, 64, generator=g)}  # the tiny recipe's data.image_size


def _recipe_model(recipe: str) -> tuple[type, Any]:
    r = load_recipe(recipe)
    return MODELS.get(r.model.name), r.model.config


def _hiera4d() -> tuple[type, Any]:
    _, slim = _recipe_model("slim-brain-tiny")
    enc_cls = MODELS.get("hiera4d")
    fields = {f.name for f in dataclasses.fields(enc_cls.config_class)}
    return enc_cls, enc_cls.config_class(**{k: v for k, v in dataclass_to_dict(slim).items() if k in fields})


def _task_model() -> tuple[type, Any]:
    _, enc = _recipe_model("deeperbrain-tiny")
    cls = MODELS.get("task-model")
    return cls, cls.config_class(encoder="deeperbrain", encoder_config=dataclass_to_dict(enc), num_outputs=3)


_PUBLISHED_SIZES = {  # tiny braindecode sizes of the published EEG architectures, and their window
    "labram": ({"num_layers": 1, "num_heads": 4}, 400),
    "cbramod": ({"n_layer": 1, "dim_feedforward": 32}, 400),
    "eegpt": ({"embed_dim": 16, "embed_num": 1, "depth": 1, "num_heads": 2, "patch_size": 64}, 512),
    "biot": ({"embed_dim": 32, "num_layers": 1, "num_heads": 2}, 400),
    "bendr": ({"encoder_h": 16, "contextualizer_hidden": 32, "transformer_layers": 1, "transformer_heads": 4}, 512),
}


def _published(name: str) -> tuple[type, Any]:
    cls = MODELS.get(name)
    kwargs, n_times = _PUBLISHED_SIZES[name]
    return cls, cls.config_class(n_times=n_times, kwargs=kwargs)


def _published_inputs(cfg: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(2, len(cfg.channels), cfg.n_times, generator=g)}


# name -> (build (class, config) from a tiny recipe, inputs of forward_features from the config, batch-dict model)
CASES: dict[str, tuple[Callable[[], tuple[type, Any]], Inputs]] = {
    "deeperbrain": (lambda: _recipe_model("deeperbrain-tiny"), _eeg_inputs),
    "slim-brain": (lambda: _recipe_model("slim-brain-tiny"), _fmri_inputs),
    "hiera4d": (_hiera4d, _fmri_inputs),
    "ultrasound-mtl": (lambda: _recipe_model("ultrasound-mtl-tiny"), _us_inputs),
    "task-model": (_task_model, lambda cfg: _eeg_inputs(load_recipe("deeperbrain-tiny").model.config)),
    **{name: (lambda name=name: _published(name), _published_inputs) for name in _PUBLISHED_SIZES},
}


def _features(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """forward_features (encoders) or forward (the task model), reduced to one tensor."""
    out = model(inputs) if MODELS.get("task-model") is type(model) else model.forward_features(**inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]  # packed tokens [K, D] with their cu_seqlens
    return out


def test_every_registered_model_has_a_case():
    built_in = [n for n in MODELS.names() if MODELS.target(n) is not None]  # test fixtures register toy models too
    assert sorted(CASES) == built_in


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward_and_hub_round_trip(name, tmp_path):
    build, make_inputs = CASES[name]
    cls, cfg = build()
    torch.manual_seed(0)
    model = cls(cfg)
    assert model.model_name == name and isinstance(model.hub_config(), cls.config_class)
    inputs = make_inputs(cfg)
    model.train()
    feats = _features(model, inputs)
    assert torch.isfinite(feats).all() and feats.shape[-1] == (cfg.num_outputs if name == "task-model"
                                                                 else model.embed_dim)
    feats.float().square().mean().backward()
    reached = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert reached, f"{name}: no parameter received a gradient"
    model.eval()
    with torch.no_grad():
        before = _features(model, inputs)
    folder = model.save_pretrained(tmp_path / name)
    loaded = cls.from_pretrained(folder)
    assert dataclass_to_dict(loaded.hub_config()) == dataclass_to_dict(model.hub_config())
    with torch.no_grad():
        torch.testing.assert_close(_features(loaded, inputs), before, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_folder_of_another_model_is_refused(name, tmp_path):
    other = "deeperbrain" if name != "deeperbrain" else "hiera4d"
    cls, cfg = CASES[other][0]()
    folder = cls(cfg).save_pretrained(tmp_path / other)
    with pytest.raises(CheckpointError, match=f"holds a '{other}' model, not '{name}'"):
        MODELS.get(name).from_pretrained(folder)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_wrong_input_shape_is_a_data_error(name):
    build, make_inputs = CASES[name]
    cls, cfg = build()
    inputs = make_inputs(cfg)
    inputs["x"] = inputs["x"].unsqueeze(1)  # one axis too many
    with pytest.raises(DataError):
        _features(cls(cfg).eval(), inputs)
