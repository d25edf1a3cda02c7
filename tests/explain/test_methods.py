"""Attribution methods: closed forms, IG completeness on DeeperBrain, LRP conservation, Grad-CAM on a planted blob."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.explain.eeg import BandSum, band_split, ig_baseline
from foundation.explain.methods import (
    attribute,
    check_method,
    gradcam,
    integrated_gradients,
    lrp,
    occlusion,
)
from foundation.explain.target import InputModel


class _Quadratic(nn.Module):
    """f(x)[k] = sum(w_k * x^2): IG from zero gives w_k * x^2 exactly."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w  # [K, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) ** 2) @ self.w.T


def test_ig_closed_form_and_delta():
    torch.manual_seed(0)
    w, x = torch.randn(3, 10), torch.randn(4, 10)
    target = torch.tensor([0, 1, 2, 0])
    attr, delta = integrated_gradients(_Quadratic(w), x, target, n_steps=16)
    torch.testing.assert_close(attr, w[target] * x**2, rtol=1e-4, atol=1e-5)
    assert delta.abs().max() < 1e-4


def test_occlusion_of_a_linear_model_is_weight_times_input():
    torch.manual_seed(0)
    lin = nn.Linear(6, 2, bias=True)
    x = torch.randn(3, 6)
    attr = occlusion(lin, x, torch.tensor([1, 0, 1]), window=(1,))
    torch.testing.assert_close(attr, lin.weight[[1, 0, 1]] * x)


def _tiny_deeperbrain():
    from foundation.finetune.task_model import TaskModel
    from foundation.modalities.eeg.model import DeeperBrain, DeeperBrainConfig

    torch.manual_seed(0)
    enc = DeeperBrain(DeeperBrainConfig(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, decoder_dim=8,
                                        decoder_depth=1, decoder_heads=2))
    return TaskModel.for_encoder(enc, 3).eval()


def test_ig_completeness_on_deeperbrain_bands():
    """On the shipped EEG model, over band components from the band-free reference: sum(attr) = f(x) - f(ref)."""
    model = _tiny_deeperbrain()
    B, C, T = 2, 5, 400
    x = torch.randn(B, C, T) + torch.sin(torch.arange(T) / 200 * 2 * torch.pi * 10)  # 10 Hz on top of noise
    pos = torch.randn(B, C, 3) * 0.05
    cm = torch.ones(B, C, dtype=torch.bool)
    net = InputModel(model, {"pos": pos, "chan_mask": cm}, transform=BandSum())
    bands = band_split(x, 200.0)
    target = torch.tensor([0, 2])
    attr, _ = integrated_gradients(net, bands, target, n_steps=64, baseline=ig_baseline(bands))
    with torch.no_grad():
        gap = (net(bands) - net(ig_baseline(bands))).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.flatten(1).sum(1), gap, rtol=0.02, atol=1e-4)
    assert attr[:, -1].abs().max() == 0  # the remainder is the reference: no attribution
    # from the zero window the model (which divides each window by its own scale) is flat along the ray:
    # attributions sum to ~0, not f(x) - f(0); that is why the band-free reference is used
    attr0, _ = integrated_gradients(net, bands, target, n_steps=16)
    assert attr0.flatten(1).sum(1).abs().max() < 1e-3 * gap.abs().max() + 1e-5


def test_lrp_conserves_relevance_in_a_bias_free_relu_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16, bias=False), nn.ReLU(), nn.Linear(16, 8, bias=False), nn.ReLU(),
                        nn.Linear(8, 3, bias=False))
    x = torch.randn(5, 12)
    target = torch.tensor([0, 1, 2, 1, 0])
    rel = lrp(net, x, target, composite="epsilon")
    out = net(x).gather(1, target[:, None])[:, 0]
    keep = out.abs() > 1e-3  # a dead unit path can leave nothing to conserve
    torch.testing.assert_close(rel.sum(1)[keep], out[keep].detach(), rtol=1e-3, atol=1e-4)


def test_lrp_epsilon_of_one_linear_layer_is_weight_times_input():
    torch.manual_seed(0)
    lin = nn.Linear(7, 2, bias=False)
    x = torch.randn(3, 7)
    rel = lrp(lin, x, torch.tensor([1, 1, 0]), composite="epsilon")
    torch.testing.assert_close(rel, lin.weight[[1, 1, 0]] * x, rtol=1e-4, atol=1e-5)


class _BlobDetector(nn.Module):
    """A conv net whose single logit reads the mean of a feature map over the top-left quadrant only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 27)
        nn.init.zeros_(self.conv.bias)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.conv(x))
        return torch.stack([f[:, :, :16, :16].mean((1, 2, 3)), f[:, :, 16:, 16:].mean((1, 2, 3))], 1)


def test_gradcam_and_ig_point_at_the_planted_blob():
    """Planted signal: a bright blob in the quadrant the logit reads; both maps peak inside it."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from foundation.explain.ultrasound import pointing_game, to_map

    net = _BlobDetector().eval()
    x = torch.rand(2, 3, 32, 32) * 0.1
    x[:, :, 4:10, 5:11] += 1.0
    truth = torch.zeros(2, 32, 32)
    truth[:, 4:10, 5:11] = 1
    cam = gradcam(net, x, net.conv, [ClassifierOutputTarget(0)] * 2)
    assert cam.shape == (2, 32, 32)
    ig = to_map(attribute("ig", net, x, torch.zeros(2, dtype=torch.long), n_steps=8))
    assert pointing_game(cam, truth)[0] == 1.0 and pointing_game(ig, truth)[0] == 1.0
    rand = to_map(attribute("random", net, x, None))
    assert rand.shape == (2, 32, 32)


def test_method_names_are_checked():
    with pytest.raises(ConfigError, match="unknown method 'igg'; did you mean 'ig'"):
        check_method("igg", ("ig",))
    with pytest.raises(ConfigError, match="'rollout' does not apply to this model; valid here: ig, occlusion"):
        check_method("rollout", ("ig", "occlusion"))
