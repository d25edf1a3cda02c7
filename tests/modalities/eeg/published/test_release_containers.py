"""Each published EEG architecture: braindecode builds it small with random weights, the test writes it in the
release's own container with the official key names, the suite loads it, and the outputs match braindecode's own
forward pass (max abs diff <= 1e-5, fp32).

Official key names, read from the release code (no braindecode mapping exists for these five classes:
``Labram.mapping`` ... are None, checked below):
LaBraM ``modeling_pretrain.NeuralTransformerForMEM`` (``student.`` + ``pos_embed``, ``time_embed`` [1, 16, D],
``patch_embed.conv1``, ``blocks.i.mlp.fc1``; ``run_class_finetuning.py`` keeps ``student.*``), CBraMod
``models/cbramod.py`` (braindecode's names), EEGPT ``EEGPT_mcae.EEGTransformer`` under ``target_encoder.`` of a
Lightning ``state_dict``, BIOT ``model/biot.BIOTEncoder`` (with its ``index`` buffer), BENDR ``dn3_ext``
``ConvEncoderBENDR`` (``encoder.Encoder_i``) and ``BENDRContextualizer`` (``relative_position.0.weight_g/_v`` of
``nn.utils.weight_norm``, ``input_conditioning.4`` a 1x1 ``Conv1d``, ``mask_replacement``).
"""
from __future__ import annotations

import warnings

import braindecode.models as bd
import pytest
import torch

import foundation
from foundation.errors import CheckpointError
from foundation.modalities.eeg.published.archs import STANDARD_1020
from foundation.modalities.eeg.published.importer import load_published
from tests._support.hub_fixtures import hub_endpoint  # noqa: F401

warnings.filterwarnings("ignore", category=UserWarning, module="braindecode")


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating parameter drawn afresh, so that a misplaced tensor shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() < 2 else 0.2) + (1.0 if "norm" in name and
                                                                                       name.endswith("weight") else 0))
    return model.eval()


def _x(c: int, t: int) -> torch.Tensor:
    return torch.randn(2, c, t, generator=torch.Generator().manual_seed(1))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-5


def test_braindecode_ships_no_mapping_from_the_original_names():
    """So the renaming is the suite's (tested against the official names below), not a braindecode table."""
    for cls in (bd.Labram, bd.CBraMod, bd.EEGPT, bd.BIOT, bd.BENDR):
        assert not getattr(cls, "mapping", None)


def test_labram_pth_student_container(tmp_path):
    ref = _randomise(bd.Labram(n_chans=19, n_times=800, n_outputs=2, sfreq=200, num_layers=2, num_heads=4))
    sd = ref.state_dict()
    g = torch.Generator().manual_seed(2)
    orig = {}
    for k, v in sd.items():
        if k.startswith("final_layer."):
            continue
        o = {"position_embedding": "pos_embed", "temporal_embedding": "time_embed"}.get(k, k)
        o = o.replace("patch_embed.temporal_conv.", "patch_embed.").replace(".mlp.0.", ".mlp.fc1.")
        o = o.replace(".mlp.2.", ".mlp.fc2.")
        if o == "time_embed":  # the release holds 16 rows; a 4-patch window uses the first 5
            v = torch.cat([v, torch.randn(1, 16 - v.shape[1], v.shape[2], generator=g)], dim=1)
        orig["student." + o] = v
    orig.update({"student.mask_token": torch.randn(1, 1, 200, generator=g),
                 "student.lm_head.weight": torch.randn(64, 200), "student.lm_head.bias": torch.zeros(64),
                 "lm_head.weight": torch.randn(64, 200), "lm_head.bias": torch.zeros(64),
                 "projection_head.0.weight": torch.randn(200, 200), "projection_head.0.bias": torch.zeros(200)})
    file = tmp_path / "labram-base.pth"
    torch.save({"model": orig, "epoch": 49}, file)
    enc = foundation.load(file)
    assert enc.model_name == "labram" and enc.net.blocks.__len__() == 2
    rep = enc.key_report
    assert rep.renamed["student.pos_embed"] == "position_embedding" and "lm_head.weight" in rep.dropped
    assert "student.mask_token" in rep.dropped and not rep.missing and not rep.unexpected
    x = _x(19, 800)
    with torch.no_grad():
        want = ref(x, return_features=True, ch_names=list(STANDARD_1020))["features"]
        _close(enc.forward_features(x), want)


def test_cbramod_plain_state_dict(tmp_path):
    ref = _randomise(bd.CBraMod(n_chans=19, n_times=800, n_outputs=2, sfreq=200, n_layer=2, nhead=8,
                                dim_feedforward=64, return_encoder_output=True))
    file = tmp_path / "pretrained_weights.pth"
    torch.save({k: v for k, v in ref.state_dict().items() if not k.startswith("final_layer")}, file)
    enc = foundation.load(file)
    assert enc.model_name == "cbramod" and enc.key_report.loaded == len(enc.net.state_dict())
    ref.proj_out = torch.nn.Identity()  # the official fine-tuning drops the pretraining projection
    x = _x(19, 800)
    with torch.no_grad():
        _close(enc.forward_features(x), ref(x, return_features=True)["features"].flatten(1, 2))


def test_eegpt_lightning_ckpt_target_encoder(tmp_path):
    chs = [{"ch_name": c} for c in STANDARD_1020]
    ref = _randomise(bd.EEGPT(n_chans=19, n_times=1024, n_outputs=2, sfreq=256, chs_info=chs, embed_dim=32,
                              embed_num=2, depth=2, num_heads=8, patch_size=64, patch_stride=64,
                              chan_proj_type="none", return_encoder_output=True))
    sd = {k: v for k, v in ref.state_dict().items() if k.startswith("target_encoder.")}
    state = dict(sd)
    state.update({k.replace("target_encoder.", "encoder."): v.clone() for k, v in sd.items()})
    state["predictor.mask_token"] = torch.zeros(1, 1, 32)
    file = tmp_path / "eegpt_mcae_58chs_4s_large4E.ckpt"
    torch.save({"state_dict": state, "epoch": 199, "global_step": 1000, "pytorch-lightning_version": "2.1.0"}, file)
    enc = foundation.load(file)
    assert enc.model_name == "eegpt" and enc.key_report.derived == ["chans_id"]
    assert "encoder.summary_token" in enc.key_report.dropped
    x = _x(19, 1024)
    with torch.no_grad():
        want = ref(x, return_features=True)["features"]  # [B, N, E * D]
        _close(enc.forward_features(x), want.reshape(2, -1, 2, 32).flatten(1, 2))


def test_biot_encoder_ckpt(tmp_path):
    ref = _randomise(bd.BIOT(n_chans=16, n_times=2000, n_outputs=2, sfreq=200, embed_dim=256, num_heads=8,
                             num_layers=1))
    sd = {k[len("encoder."):]: v for k, v in ref.state_dict().items() if k.startswith("encoder.")}
    sd["index"] = torch.arange(16)
    file = tmp_path / "EEG-PREST-16-channels.ckpt"
    torch.save(sd, file)
    enc, line = load_published(str(file), window_seconds=10.0)  # the data's window sizes the input
    assert enc.model_name == "biot" and enc.config.channels[0] == "FP1-F7" and len(enc.config.channels) == 16
    assert enc.key_report.dropped == {"index": "derived buffer (channel index 0..C-1)"} and "1 dropped" in line
    x = _x(16, 2000)
    with torch.no_grad():
        _close(enc.forward_features(x), ref(x, return_features=True)["features"])


@pytest.mark.parametrize("style", ["weight_g/weight_v", "parametrizations"])
def test_bendr_encoder_and_contextualizer_pt(tmp_path, style):
    ref = _randomise(bd.BENDR(n_chans=20, n_times=1024, n_outputs=2, sfreq=256, encoder_h=32,
                              contextualizer_hidden=64, transformer_layers=2, transformer_heads=8))
    sd = ref.state_dict()
    enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    ctx = {}
    for k, v in sd.items():
        if not k.startswith("contextualizer."):
            continue
        o = k[len("contextualizer."):]
        if style == "weight_g/weight_v":
            o = o.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                  "weight_v")
        if o.startswith("input_conditioning.3."):
            o = o.replace("input_conditioning.3.", "input_conditioning.4.")
            v = v.unsqueeze(-1) if v.dim() == 2 else v  # the release's 1x1 Conv1d
        ctx[o] = v
    ctx["mask_replacement"] = torch.randn(32)
    torch.save(enc_sd, tmp_path / "encoder.pt")
    torch.save(ctx, tmp_path / "contextualizer.pt")
    enc = foundation.load(tmp_path / "encoder.pt")
    assert enc.model_name == "bendr" and enc.config.channels[-1] == "SCALE"
    assert "contextualizer:mask_replacement" not in enc.key_report.renamed and not enc.key_report.missing
    x = _x(20, 1024)
    with torch.no_grad():
        _close(enc.forward_features(x), ref(x, return_features=True)["features"])


def test_bendr_encoder_alone_pools_in_four_chunks(tmp_path):
    ref = _randomise(bd.BENDR(n_chans=20, n_times=1024, n_outputs=2, sfreq=256, encoder_h=32, encoder_only=True))
    torch.save({k[len("encoder."):]: v for k, v in ref.state_dict().items() if k.startswith("encoder.")},
               tmp_path / "encoder.pt")
    enc = foundation.load(tmp_path / "encoder.pt", arch="bendr")
    x = _x(20, 1024)
    with torch.no_grad():
        _close(enc.forward_features(x), ref(x, return_features=True)["features"])


def test_braindecode_hub_folder(tmp_path):
    ref = _randomise(bd.CBraMod(n_chans=19, n_times=800, n_outputs=3, sfreq=200, n_layer=1, nhead=8,
                                dim_feedforward=64))
    ref.save_pretrained(tmp_path / "bd")
    enc = foundation.load(tmp_path / "bd")  # config.json has channels_kernel_stride_padding_norm: CBraMod
    assert enc.model_name == "cbramod"
    assert set(enc.key_report.dropped) == {"final_layer.1.weight", "final_layer.1.bias"}
    ref.proj_out = torch.nn.Identity()
    x = _x(19, 800)
    with torch.no_grad():
        _close(enc.forward_features(x), ref(x, return_features=True)["features"].flatten(1, 2))


def test_a_partial_load_is_refused_unless_the_keys_are_named(tmp_path):
    ref = _randomise(bd.CBraMod(n_chans=19, n_times=800, n_outputs=2, sfreq=200, n_layer=1, nhead=8,
                                dim_feedforward=64))
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("final_layer")}
    del sd["proj_out.0.weight"], sd["proj_out.0.bias"]
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"partial load refused.*proj_out\.0\.weight.*extra\.weight"):
        foundation.load(tmp_path / "cut.pth")
    enc = foundation.load(tmp_path / "cut.pth", exclude_keys=("proj_out", "extra"))
    assert enc.key_report.excluded == ["extra.weight", "proj_out.0.bias", "proj_out.0.weight"]


def test_a_file_that_cannot_tell_its_architecture_asks_for_arch(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "mystery.pth")
    with pytest.raises(CheckpointError, match="--arch"):
        foundation.load(tmp_path / "mystery.pth")


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: the kind of file weights_only must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    file = tmp_path / "labram-base.pth"
    torch.save({"model": {"student.cls_token": torch.zeros(1, 1, 200)}, "payload": _Payload(str(marker))}, file)
    with pytest.raises(CheckpointError, match="refused.*nothing in it was run"):
        foundation.load(file)
    assert not marker.exists()
    torch.load(file, weights_only=False)  # the same file unpickled without the guard does run the payload
    assert marker.exists()


def test_arch_random_init_is_labelled():
    enc = foundation.load("arch:cbramod")
    assert enc.config.init == "random init" and enc.model_name == "cbramod"
    assert enc.forward_features(torch.zeros(1, 19, 800)).shape == (1, 19 * 4, 200)


def test_braindecode_hub_id_through_the_loopback_hub(tmp_path, hub_endpoint):  # noqa: F811
    from foundation.hub.client import push_folder

    ref = _randomise(bd.CBraMod(n_chans=19, n_times=800, n_outputs=3, sfreq=200, n_layer=1, nhead=8,
                                dim_feedforward=64))
    ref.save_pretrained(tmp_path / "bd")
    push_folder(tmp_path / "bd", "braindecode/cbramod-pretrained")
    enc = foundation.load("braindecode/cbramod-pretrained")
    assert enc.model_name == "cbramod" and "braindecode/cbramod-pretrained" in enc.key_report.source
    ref.proj_out = torch.nn.Identity()
    x = _x(19, 800)
    with torch.no_grad():
        _close(enc.forward_features(x), ref(x, return_features=True)["features"].flatten(1, 2))
