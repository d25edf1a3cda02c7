"""Any timm backbone for the ultrasound model: by name, or a timm folder (config.json + weights) read from a local
folder or an ``hf-hub:`` id (against the loopback Hub); exports rebuild offline; bad sources are refused."""
from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from huggingface_hub import HfApi

from foundation.errors import CheckpointError, ConfigError, HubError
from foundation.modalities.ultrasound.model import UltrasoundMTL
from tests._support.hub_fixtures import hub_endpoint  # noqa: F401
from tests.modalities.ultrasound._helpers import model_config


def _timm_folder(path, name: str = "mobilenetv3_small_050", seed: int = 4, **model_args):
    """A timm model at random init (seeded) written in timm's Hub layout; returns (folder, its state dict)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **model_args)
    timm.models.save_for_hf(model, path, model_args=model_args or None, safe_serialization=True)
    return path, model.state_dict()


def _same_backbone(model: UltrasoundMTL, ref: dict[str, torch.Tensor]) -> bool:
    got = model.backbone.state_dict()
    return bool(got) and all(torch.equal(v, ref[k]) for k, v in got.items())


def _push(endpoint, folder, repo_id: str) -> str:
    api = HfApi(endpoint=endpoint.url)
    api.create_repo(repo_id)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder)).oid


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet10t", "convnext_atto"])
def test_any_timm_backbone_by_name_feeds_the_fpn_and_the_tokens(name):
    model = UltrasoundMTL(model_config(backbone=name))
    channels = timm.create_model(name, features_only=True).feature_info.channels()[-4:]
    assert model.embed_dim == channels[-1]
    deep, fpn = model.features(torch.rand(2, 3, 64, 64))
    assert deep.shape[:2] == (2, channels[-1]) and fpn.shape == (2, 16, 16, 16)
    assert model.forward_features(torch.rand(2, 3, 64, 64)).shape[-1] == channels[-1]


def test_local_dir_backbone_brings_its_architecture_and_weights_and_exports_rebuild_offline(tmp_path):
    folder, ref = _timm_folder(tmp_path / "timm-folder", drop_rate=0.1)
    model = UltrasoundMTL(model_config(backbone=f"local-dir:{folder}"))
    assert _same_backbone(model, ref)
    recorded = model.hub_config()
    assert recorded.backbone == "mobilenetv3_small_050" and recorded.backbone_args["drop_rate"] == 0.1
    assert recorded.backbone_source == f"local-dir:{folder}" and recorded.pretrained == ""
    model.save_pretrained(tmp_path / "export")
    shutil.rmtree(folder)  # the export needs the source no more
    again = UltrasoundMTL.from_pretrained(tmp_path / "export")
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), again.forward_features(x))
    assert json.loads((tmp_path / "export" / "config.json").read_text())["backbone_source"].startswith("local-dir:")


def test_hf_hub_backbone_from_the_loopback_hub(tmp_path, hub_endpoint):  # noqa: F811
    folder, ref = _timm_folder(tmp_path / "timm-folder")
    first = _push(hub_endpoint, folder, "timm-org/tiny-backbone")
    model = UltrasoundMTL(model_config(backbone="hf-hub:timm-org/tiny-backbone"))
    assert _same_backbone(model, ref)
    fetched = [p for m, p in hub_endpoint.server.requests if m == "GET" and "/resolve/" in p]
    assert any(p.endswith("/config.json") for p in fetched) and any(p.endswith("/model.safetensors") for p in fetched)
    assert model.hub_config().backbone == "mobilenetv3_small_050"
    # a revision pins the weights: a later push does not change what @<first commit> builds
    _timm_folder(folder, seed=5)
    HfApi(endpoint=hub_endpoint.url).upload_folder(repo_id="timm-org/tiny-backbone", folder_path=str(folder))
    pinned = UltrasoundMTL(model_config(backbone=f"hf-hub:timm-org/tiny-backbone@{first}"))
    latest = UltrasoundMTL(model_config(backbone="hf-hub:timm-org/tiny-backbone"))
    assert _same_backbone(pinned, ref) and not _same_backbone(latest, ref)
    with pytest.raises(HubError, match="repository not found"):
        UltrasoundMTL(model_config(backbone="hf-hub:timm-org/missing"))


def test_timm_weights_of_a_named_backbone_from_the_loopback_hub(tmp_path, hub_endpoint):  # noqa: F811
    # the existing path: model.backbone names the architecture, model.pretrained the weights' Hub repo
    folder, ref = _timm_folder(tmp_path / "tinynet", name="tinynet_e")
    _push(hub_endpoint, folder, "timm-org/tinynet-weights")
    model = UltrasoundMTL(model_config(pretrained="hf-hub:timm-org/tinynet-weights"))
    assert _same_backbone(model, ref)
    recorded = model.hub_config()
    assert recorded.pretrained == "" and recorded.backbone_source == "tinynet_e with weights from hf-hub:timm-org/tinynet-weights"


def test_bad_backbone_sources_are_refused(tmp_path):
    folder, _ = _timm_folder(tmp_path / "timm-folder")
    with pytest.raises(ConfigError, match="brings its own weights; leave model.pretrained empty"):
        UltrasoundMTL(model_config(backbone=f"local-dir:{folder}", pretrained=str(folder / "model.safetensors")))
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no weights"):
        UltrasoundMTL(model_config(backbone=f"local-dir:{folder}"))
    with pytest.raises(CheckpointError, match="no readable config.json"):
        UltrasoundMTL(model_config(backbone=f"local-dir:{tmp_path / 'nowhere'}"))
    (folder / "config.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(CheckpointError, match="names no 'architecture'"):
        UltrasoundMTL(model_config(backbone=f"local-dir:{folder}"))
    with pytest.raises(ConfigError, match=r"strides \[16, 16, 16, 16\]; the FPN and the dense heads need"):
        UltrasoundMTL(model_config(backbone="vit_tiny_patch16_224", backbone_args={"img_size": 64}))
    with pytest.raises(ConfigError, match="a timm folder is named 'hf-hub:org/name' or 'local-dir:/path'"):
        UltrasoundMTL(model_config(backbone="my-org/backbone"))
