"""The data-dependent parts of each shipped model's training step, moved into the objective's ``prepare`` or
made shape-static (issue 16): on a real batch of each tiny recipe, the step computes what the old path computed
(the old code is kept here as the reference), outputs and gradients."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from foundation.kernels import pack_visible, packed_mean, sample_ids
from foundation.modalities.fmri.hiera4d import HieraBlock
from foundation.modalities.fmri.slim_brain import JepaPredictor
from foundation.modalities.ultrasound.losses import TaskLosses, dice_ce_loss, giou_loss
from tests.pretrain._real_batches import real_batch, train_module


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every gradient within float rounding of the reference, relative to its norm (batch norms' backward
    spreads the last-bit differences of a reordered sum over whole tensors)."""
    assert sorted(got) == sorted(want) and got
    scale = max(float(g.norm()) for g in want.values())
    for name in want:
        err, size = float((got[name] - want[name]).norm()), float(want[name].norm())
        assert err <= 1e-5 * size + 1e-7 * scale, f"{name}: error {err:.2e} on a gradient of norm {size:.2e}"


# ------------------------------------------------------------------ DeeperBrain: packing plans
def _old_deeperbrain(model, x, pos, chan_mask, keep) -> tuple[torch.Tensor, torch.Tensor]:
    """DeeperBrain.forward before issue 16: index lists packed in the step, scatter by (sample, token) pairs."""
    P = x.shape[-1] // model.config.patch_size
    packed, cu = model.forward_features(x, pos, chan_mask, keep)
    B, C = chan_mask.shape
    N = C * P
    vis = model.decoder_embed(packed)
    enc = (model.decoder_chan_enc(pos, chan_mask)[:, :, None, :]
           + model.decoder_time_enc(model.patch_times(P, packed.device))[None, None])
    full = model.mask_token.to(vis.dtype).expand(B, N, -1).clone()
    seg = sample_ids(cu, packed.shape[0])
    idx = torch.cat(keep)
    full[seg, idx] = vis
    full = full + enc.reshape(B, N, -1).to(vis.dtype)
    valid = model.valid_tokens(chan_mask, P)
    dpk, dcu, dmax = pack_visible(full, valid)
    for blk in model.decoder_blocks:
        dpk = blk(dpk, dcu, dmax)
    pred = model.decoder_pred(model.decoder_norm(dpk))
    recon = pred.new_zeros(B, N, pred.shape[-1]).masked_scatter(valid[..., None], pred)
    slot = seg * C + torch.div(idx, P, rounding_mode="floor")
    sums = packed.new_zeros(B * C, packed.shape[1]).index_add_(0, slot, packed)
    cnt = packed.new_zeros(B * C).index_add_(0, slot, packed.new_ones(slot.shape))[:, None]
    pooled = torch.where(cnt > 0, sums / cnt.clamp(min=1), packed_mean(packed, cu).repeat_interleave(C, 0))
    pooled = pooled.reshape(B, C, -1) + model.chan_enc(pos, chan_mask)
    return recon, model.stats_head(model.stats_norm(pooled))


def test_deeperbrain_planned_step_equals_the_old_path(tmp_path):
    module = train_module("deeperbrain-tiny")
    model = module.model
    batch = real_batch("deeperbrain-tiny", tmp_path)
    torch.manual_seed(1)
    prepared = module.objective.prepare(model, dict(batch))
    args = (prepared["x"], prepared["pos"], prepared["chan_mask"])
    outs = {}
    for name, run in (("new", lambda: model(*args, prepared["keep"], prepared["plans"])),
                      ("old", lambda: _old_deeperbrain(model, *args, prepared["keep"]))):
        torch.manual_seed(2)
        recon, stats = run()
        g = torch.Generator().manual_seed(3)
        weights = torch.randn(recon.shape, generator=g), torch.randn(stats.shape, generator=g)
        ((recon * weights[0]).sum() + (stats * weights[1]).sum()).backward()
        outs[name] = (recon.detach(), stats.detach(), _grads(model))
    torch.testing.assert_close(outs["new"][0], outs["old"][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(outs["new"][1], outs["old"][1], rtol=1e-6, atol=1e-7)
    _assert_same(outs["new"][2], outs["old"][2])


# ------------------------------------------------------------------ SLIM-Brain: unit counts on the host
def _old_predictor_forward(self, ctx, ctx_pos, tgt_pos):
    """JepaPredictor.forward before issue 16 (a boolean row mask, the longest length read from a tensor)."""
    h = self.embed(ctx)
    pieces, start, is_tgt = [], 0, []
    for cp, tp in zip(ctx_pos, tgt_pos):
        pieces += [h[start:start + len(cp)] + self.pos_embed[cp], self.mask_token + self.pos_embed[tp]]
        is_tgt += [torch.zeros(len(cp), dtype=torch.bool), torch.ones(len(tp), dtype=torch.bool)]
        start += len(cp)
    x = torch.cat(pieces)
    lens = torch.tensor([len(c) + len(t) for c, t in zip(ctx_pos, tgt_pos)])
    cu = F.pad(lens.cumsum(0), (1, 0)).to(device=x.device, dtype=torch.int32)
    for blk in self.blocks:
        x = blk(x, cu, int(lens.max()))
    return self.out(self.norm(x[torch.cat(is_tgt).to(x.device)]))


def test_slim_brain_step_with_host_counts_equals_the_old_path(tmp_path, monkeypatch):
    module = train_module("slim-brain-tiny")
    batch = real_batch("slim-brain-tiny", tmp_path)
    batch["unit_fg"][0, :30] = False  # a window with background units: per-sample unit counts differ
    torch.manual_seed(1)
    prepared = module.objective.prepare(module.model, dict(batch))
    assert len({len(k) for k in prepared["keep"]}) > 1 or len({len(d) for d in prepared["drop"]}) > 1  # varlen

    def run() -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
        torch.manual_seed(2)
        loss, metrics = module(prepared)
        loss.backward()
        return loss.detach(), metrics, _grads(module)

    new = run()
    block_forward = HieraBlock.forward
    monkeypatch.setattr(HieraBlock, "forward", lambda self, x, cu, counts=None: block_forward(self, x, cu))  # reads cu
    monkeypatch.setattr(JepaPredictor, "forward", _old_predictor_forward)
    old = run()
    torch.testing.assert_close(new[0], old[0], rtol=1e-6, atol=1e-7)
    for key in old[1]:
        torch.testing.assert_close(torch.as_tensor(new[1][key]), torch.as_tensor(old[1][key]))
    _assert_same(new[2], old[2])


# ------------------------------------------------------------------ ultrasound: routes, shape-static losses
def _old_detection(self, out, box, state):
    from torchvision.ops import generalized_box_iou_loss

    loss = self.objectness_weight * F.binary_cross_entropy_with_logits(out["objectness"].float(), state.float())
    pos = state == 1
    if bool(pos.any()):
        pred, target = out["box"][pos].float(), box[pos].float()
        loss = loss + generalized_box_iou_loss(pred, target, reduction="mean")
        loss = loss + self.box_l1_weight * F.l1_loss(pred, target)
    return loss


def _old_keypoints(self, out, points, valid):
    pred = out["points"].float()
    n_pts = pred.shape[1]
    target, ok = points[:, :n_pts].float(), valid[:, :n_pts]
    return (pred - target).abs().sum(-1)[ok].mean()


def _old_segmentation(self, logits, mask):
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)(logits.float(), mask[:, None].long())


def test_ultrasound_routed_step_equals_the_old_path(tmp_path, monkeypatch):
    module = train_module("ultrasound-mtl-tiny")
    batch = real_batch("ultrasound-mtl-tiny", tmp_path)
    types = {module.model.table[module.model.task_ids[t]].type for t in batch["task"].tolist()}
    assert len(types) >= 3, types  # several kinds of head in the batch

    def run(b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
        torch.manual_seed(2)
        loss, metrics = module.step(b)
        loss.backward()
        return loss.detach(), metrics, _grads(module)

    prepared = module.objective.prepare(module.model, dict(batch))
    assert list(prepared["routes"]) == [module.model.task_ids[t] for t in torch.unique(batch["task"]).tolist()]
    new = run(prepared)
    unprepared = run(dict(batch))  # forward routes the batch itself
    monkeypatch.setattr(TaskLosses, "detection", _old_detection)
    monkeypatch.setattr(TaskLosses, "keypoints", _old_keypoints)
    monkeypatch.setattr(TaskLosses, "segmentation", _old_segmentation)
    old = run(dict(batch))
    for other in (unprepared, old):
        torch.testing.assert_close(new[0], other[0], rtol=1e-6, atol=1e-6)
        for key in other[1]:
            torch.testing.assert_close(new[1][key], other[1][key], rtol=1e-6, atol=1e-6)
        _assert_same(new[2], other[2])


def test_ultrasound_channels_last_step_equals_the_nchw_one(tmp_path, monkeypatch):
    """The model runs its backbone and FPN in channels-last layout (issue 16): loss, metrics and gradients of a
    real batch's step equal those of the NCHW layout it used before, to float rounding (other oneDNN kernels)."""
    from foundation.modalities.ultrasound.model import UltrasoundMTL

    module = train_module("ultrasound-mtl-tiny")
    batch = module.objective.prepare(module.model, dict(real_batch("ultrasound-mtl-tiny", tmp_path)))
    layouts = []
    inner = UltrasoundMTL._normalised

    def run() -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
        torch.manual_seed(2)
        loss, metrics = module.step(batch)
        loss.backward()
        return loss.detach(), metrics, _grads(module)

    def spy(self, image):
        x = inner(self, image)
        layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return x

    monkeypatch.setattr(UltrasoundMTL, "_normalised", spy)
    new = run()
    monkeypatch.setattr(UltrasoundMTL, "_normalised", lambda self, image: inner(self, image).contiguous())
    old = run()
    assert layouts == [True]
    torch.testing.assert_close(new[0], old[0], rtol=1e-6, atol=1e-6)
    for key in old[1]:
        torch.testing.assert_close(new[1][key], old[1][key], rtol=1e-5, atol=1e-6)
    # a convolution's weight gradient sums over every pixel of the batch (32k terms for the stem): another
    # kernel's summation order moves it by ~sqrt(n) ulps, 2e-5 of its norm here, so 1e-4 rather than 1e-5
    scale = max(float(g.norm()) for g in old[2].values())
    assert sorted(new[2]) == sorted(old[2])
    for name, want in old[2].items():
        err, size = float((new[2][name] - want).norm()), float(want.norm())
        assert err <= 1e-4 * size + 1e-7 * scale, f"{name}: error {err:.2e} on a gradient of norm {size:.2e}"


def test_dice_ce_loss_matches_monai_values_and_gradients():
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    for shape in ((3, 4, 16, 16), (2, 2, 8, 8, 8)):
        logits = torch.randn(shape, generator=g, requires_grad=True)
        target = torch.randint(shape[1], (shape[0], *shape[2:]), generator=g)
        ours = dice_ce_loss(logits, target)
        (ours_grad,) = torch.autograd.grad(ours, logits)
        ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target[:, None])
        (ref_grad,) = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-5, atol=1e-8)


def test_giou_loss_matches_torchvision_values_and_gradients():
    from torchvision.ops import generalized_box_iou_loss

    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.3, 0.3], [0.2, 0.2, 0.4, 0.4], [0.3, 0.3, 0.3, 0.6],
                          [0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.3, 0.3, 0.7, 0.7], [0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.5, 0.5],
                           [0.0, 0.0, 1.0, 1.0]])  # overlapping, disjoint, inside, degenerate, identical
    ours = giou_loss(boxes, target)
    ref = generalized_box_iou_loss(boxes, target, reduction="none")
    torch.testing.assert_close(ours, ref)
    w = torch.arange(1.0, 6.0)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), boxes)[0],
                               torch.autograd.grad((ref * w).sum(), boxes)[0])
    assert float(ours[4].detach()) == pytest.approx(0.0, abs=1e-6) and float(ours[1].detach()) > 1.0  # same: 0


@pytest.mark.parametrize("state", [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
def test_masked_box_and_keypoint_losses_equal_the_indexed_ones(state):
    losses = TaskLosses()
    g = torch.Generator().manual_seed(1)
    box = torch.rand(4, 2, generator=g).repeat(1, 2) + torch.tensor([0.0, 0.0, 0.3, 0.3])
    out = {"box": (box + 0.05 * torch.randn(4, 4, generator=g)).requires_grad_(),
           "objectness": torch.randn(4, generator=g, requires_grad=True),
           "points": torch.rand(4, 2, 2, generator=g, requires_grad=True)}
    state_t = torch.tensor(state)
    ours = losses.detection(out, box, state_t)
    ref = _old_detection(losses, out, box, state_t)
    torch.testing.assert_close(ours, ref)
    (ours_grad,) = torch.autograd.grad(ours, out["box"])
    (ref_grad,) = torch.autograd.grad(ref, out["box"], allow_unused=True, materialize_grads=True)  # none: zeros
    torch.testing.assert_close(ours_grad, ref_grad)
    points, valid = torch.rand(4, 3, 2, generator=g), torch.tensor(state)[:, None].repeat(1, 3).bool()
    valid[0, 1] = False
    ours = losses.keypoints(out, points, valid)
    ref = _old_keypoints(losses, out, points, valid)
    torch.testing.assert_close(ours, ref, equal_nan=True)  # no valid point: NaN, as before


# ------------------------------------------------------------------ multi-rank ZeRO-1/2: only unreached parameters
def test_touch_all_params_touches_exactly_the_parameters_a_batch_does_not_reach(tmp_path):
    """TrainModule.unreached_params finds the parameters that get no gradient (the heads of tasks absent from the
    batch, when the objective does not touch them itself); with ``touch_all_params`` every trainable parameter
    gets a gradient, zero where unreached, and the loss is unchanged."""
    module = train_module("ultrasound-mtl-tiny")
    batch = module.objective.prepare(module.model, real_batch("ultrasound-mtl-tiny", tmp_path))
    losses, _, _ = module.objective.task_losses(module.model, batch)  # no touch of absent heads here
    loss = losses.sum()
    unreached = {id(p) for p in module.unreached_params(loss)}
    loss.backward()
    no_grad = {id(p) for p in module.parameters() if p.requires_grad and p.grad is None}
    assert unreached == no_grad and len(no_grad) > 10  # the absent tasks' heads
    module.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    want, _ = module.step(batch)
    module.touch_all_params = True
    torch.manual_seed(2)
    got, _ = module(batch)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert module.unreached_params(module.step(batch)[0]) == []  # the objective touches absent heads itself
