"""AttnLRP on the shipped transformers: conservation on the tiny recipes' encoders, values unchanged, refusal of
modules without a rule; attention rollout through Hiera4D's pooling stages (a dense reference, a planted token)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.config import dataclass_to_dict, load_recipe
from foundation.errors import ConfigError
from foundation.explain.attnlrp import lrp_rules, transformer_lrp, unit_attention_probs
from foundation.explain.rollout import hiera_rollout
from foundation.explain.target import InputModel
from foundation.finetune.task_model import TaskModel
from foundation.registry import MODELS


def _encoder(recipe: str, **changes) -> nn.Module:
    rec = load_recipe(recipe)
    cls = MODELS.get(rec.model.name)
    return cls(cls.config_class(**{**dataclass_to_dict(rec.model.config), **changes}))


def _eeg_net() -> tuple[InputModel, torch.Tensor]:
    """A 3-class fine-tune of the deeperbrain-tiny encoder (spectral branch, window scale) on two windows, one
    with three padded channels."""
    torch.manual_seed(0)
    model = TaskModel.for_encoder(_encoder("deeperbrain-tiny"), 3).eval()
    x = torch.randn(2, 19, 800)
    pos = torch.randn(2, 19, 3) * 0.05
    cm = torch.ones(2, 19, dtype=torch.bool)
    cm[1, -3:] = False
    x[1, -3:] = 0
    return InputModel(model, {"pos": pos, "chan_mask": cm}), x


def _fmri_net() -> tuple[InputModel, torch.Tensor]:
    """A 3-class fine-tune of the slim-brain-tiny encoder (Hiera4D: mask-unit attention, two q-pooling stages)."""
    torch.manual_seed(0)
    model = TaskModel.for_encoder(_encoder("slim-brain-tiny"), 3).eval()
    return InputModel(model, {}), torch.randn(2, 1, 8, 24, 24, 24)


def _zero_additive_constants(net: nn.Module) -> None:
    """Biases, LayerNorm shifts, positional and channel/time encodings to zero: what remains is homogeneous."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or "pos_embed" in name or "chan_enc" in name or "time_enc" in name:
                p.zero_()


@pytest.mark.parametrize("make", [_eeg_net, _fmri_net], ids=["deeperbrain", "hiera4d"])
def test_relevance_is_conserved_on_the_shipped_encoders(make):
    """With the additive constants at zero, the input relevance sums to the explained logit (AttnLRP's
    conservation); plain gradient x input does not (LayerNorm makes the net scale-invariant: it sums to ~0)."""
    net, x = make()
    _zero_additive_constants(net)
    target = torch.tensor([0, 2])
    with torch.no_grad():
        f = net(x).gather(1, target[:, None])[:, 0]
    rel = transformer_lrp(net, x, target)
    assert rel.shape == x.shape
    torch.testing.assert_close(rel.flatten(1).sum(1), f, rtol=1e-3, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    net(xg).gather(1, target[:, None]).sum().backward()
    plain = (xg * xg.grad).flatten(1).sum(1)
    assert ((plain - f).abs() > 0.2 * f.abs()).all()


@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
@pytest.mark.parametrize("make", [_eeg_net, _fmri_net], ids=["deeperbrain", "hiera4d"])
def test_rules_leave_the_forward_values_and_the_model_unchanged(make, rule):
    net, x = make()
    with torch.no_grad():
        before = net(x)
        with lrp_rules(net, rule):
            during = net(x)
        after = net(x)
    torch.testing.assert_close(during, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert "scale_input" not in vars(net.model.encoder)  # the instance override is gone


def _explicit_attnlrp(att: nn.Module, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AttnLRP of ``f = sum(e * att(x))`` through one dense attention layer (biases zero) by explicit relevance
    messages, the paper's equations written out: the z-rule on the linear maps (``R_in = in * W^T (R_out /
    out)``), the uniform rule on ``P v`` and ``q k^T`` (half to each factor, in proportion to its term), the softmax
    rule ``R_s = s * (R_P - P sum_j R_P)``. x ``[N, D]`` -> (R_x ``[N, D]``, relevance the softmax absorbs)."""
    N, D = x.shape
    H, Dh = att.num_heads, att.head_dim
    qkv = x @ att.qkv.weight.T  # [N, 3D]
    q, k, v = qkv.reshape(N, 3, H, Dh).unbind(1)  # 3 x [N, H, Dh]
    s = torch.einsum("ihd,jhd->hij", q, k) * att.scale  # [H, N, N]
    P = s.softmax(-1)
    o = torch.einsum("hij,jhd->ihd", P, v)  # [N, H, Dh]
    y = o.reshape(N, D) @ att.proj.weight.T  # [N, D]
    r_o = (o.reshape(N, D) * ((e * y / y) @ att.proj.weight)).reshape(N, H, Dh)
    ratio = r_o / o
    r_p = 0.5 * torch.einsum("hij,jhd,ihd->hij", P, v, ratio)
    r_v = 0.5 * torch.einsum("hij,jhd,ihd->jhd", P, v, ratio)
    r_s = s * (r_p - P * r_p.sum(-1, keepdim=True))
    ratio_s = r_s / s
    r_q = 0.5 * att.scale * torch.einsum("ihd,jhd,hij->ihd", q, k, ratio_s)
    r_k = 0.5 * att.scale * torch.einsum("ihd,jhd,hij->jhd", q, k, ratio_s)
    r_qkv = torch.stack([r_q, r_k, r_v], 1).reshape(N, 3 * D)
    return x * ((r_qkv / qkv) @ att.qkv.weight), r_p.sum() - r_s.sum()


def test_attnlrp_rule_matches_the_explicit_relevance_messages_and_accounts_for_every_share():
    """AttnLRP's softmax and uniform rules as gradient x input (the hooks) against the paper's equations written
    out message by message, on one attention layer in float64: equal per input element. Conservation: the input
    relevance plus what the softmax's bias term absorbs is the output's relevance; CP-LRP conserves it alone."""
    from foundation.layers.attention import Attention

    torch.manual_seed(0)
    att = Attention(16, num_heads=2, qkv_bias=False, proj_bias=False).double().eval()
    x, e = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64)
    f = (e * att(x[None])[0]).sum()
    ref, absorbed = _explicit_attnlrp(att, x, e)
    out = {}
    for rule in ("attnlrp", "cp"):
        xg = x[None].clone().requires_grad_(True)
        with lrp_rules(att, rule):
            (e * att(xg)[0]).sum().backward()
        out[rule] = (xg * xg.grad)[0]
    torch.testing.assert_close(out["attnlrp"], ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out["attnlrp"].sum() + absorbed, f, rtol=1e-9, atol=1e-9)
    assert absorbed.abs() > 1e-3 * f.abs()  # the softmax rule really is not conservative here
    torch.testing.assert_close(out["cp"].sum(), f, rtol=1e-9, atol=1e-9)
    assert (out["attnlrp"] - out["cp"]).abs().max() > 1e-3 * out["cp"].abs().max()  # q and k now get relevance


@pytest.mark.parametrize("make", [_eeg_net, _fmri_net], ids=["deeperbrain", "hiera4d"])
def test_attnlrp_rule_runs_on_the_shipped_encoders(make):
    """Through DeeperBrain's attention and Hiera4D's mask-unit attention with q pooling: finite relevance that
    differs from CP-LRP's (relevance through q and k) and an unknown rule refused with the valid names."""
    net, x = make()
    target = torch.tensor([0, 2])
    cp, full = transformer_lrp(net, x, target), transformer_lrp(net, x, target, attention="attnlrp")
    assert torch.isfinite(full).all() and full.shape == x.shape
    assert (full - cp).abs().max() > 1e-4 * cp.abs().max()
    with pytest.raises(ConfigError, match="unknown attention rule 'bilinear'; valid: cp, attnlrp"):
        transformer_lrp(net, x, target, attention="bilinear")
    from foundation.explain import ExplainOptions

    with pytest.raises(ConfigError, match="lrp_attention 'bilinear' is not a rule; valid: cp, attnlrp"):
        ExplainOptions(lrp_attention="bilinear")


def test_padded_channels_get_no_relevance():
    net, x = _eeg_net()
    rel = transformer_lrp(net, x, torch.tensor([1, 1]))
    assert rel[1, -3:].abs().max() == 0 and rel[1, :-3].abs().sum() > 0


def test_a_module_without_a_rule_is_refused():
    class Square(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    net = nn.Sequential(nn.Linear(4, 4), Square(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"no AttnLRP rule for module '1' \(Square\)"):
        transformer_lrp(net, torch.randn(3, 4), torch.tensor([0, 1, 0]))


# ------------------------------------------------------------------------------------------ Hiera4D rollout
def _dense_rollout(hiera: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference for a Hiera4D without pooling: the textbook product of [N, N] matrices per sample, mean row."""
    seen = []
    hooks = [b.attn.register_forward_pre_hook(lambda _m, a: seen.append(a[:2])) for b in hiera.blocks]  # (x, cu[, counts])
    with torch.no_grad():
        hiera.forward_units(x)
    for h in hooks:
        h.remove()
    out = []
    for b in range(x.shape[0]):
        R = None
        for blk, (xn, cu) in zip(hiera.blocks, seen):
            probs, _ = unit_attention_probs(blk.attn, xn, cu)
            P = probs[b].float()
            if blk.attn.use_mask_unit_attn:  # [U, H, T, T] -> block-diagonal [U * T, U * T]
                P = torch.block_diag(*P.mean(1))
            else:
                P = P.mean(0)
            A = 0.5 * P + 0.5 * torch.eye(P.shape[0])
            R = A if R is None else A @ R
        out.append(R.mean(0))
    return torch.stack(out)  # [B, U * T_u] unit-major


def test_hiera_rollout_matches_the_dense_product_without_pooling():
    torch.manual_seed(0)
    enc = _encoder("slim-brain-tiny", input_size=(4, 8, 8, 8), stages=(1, 2), q_pool=0, mask_unit_size=(1, 2, 2, 2),
                   mask_unit_attn=(True, False)).eval()
    hiera = enc.encoder
    x = torch.randn(2, 1, 4, 8, 8, 8)
    got = hiera_rollout(enc, x)  # [B, 1, T, Z, Y, X]
    ref = _dense_rollout(hiera, x)
    c = hiera.config
    grid = torch.arange(len(ref[0]), dtype=torch.float64).view(1, *c.tokens, 1)
    order = hiera._to_units(grid).reshape(-1).long()
    tokens = torch.zeros_like(ref)
    tokens[:, order] = ref
    st = c.patch_stride
    per_voxel = got[:, 0, ::st[0], ::st[1], ::st[2], ::st[3]].reshape(2, -1) * torch.tensor(st).prod()
    torch.testing.assert_close(per_voxel, tokens, rtol=1e-4, atol=1e-7)


def test_hiera_rollout_through_pooling_sums_to_one_and_finds_an_attended_token():
    """The tiny recipe's Hiera4D (mask units, two q-pooling stages, a global stage): the map is a distribution over
    voxels, and when every key reads one planted feature, the planted patch is where the rollout peaks."""
    torch.manual_seed(0)
    enc = _encoder("slim-brain-tiny").eval()
    hiera = enc.encoder
    x = torch.zeros(1, 1, 8, 24, 24, 24)
    x[0, 0, 2:4, 8:10, 14:16, 4:6] = 1.0  # one patch (stride 2 on every axis)
    with torch.no_grad():
        for p in hiera.parameters():
            p.zero_()
        for blk in hiera.blocks:
            blk.norm1.weight.fill_(1.0)
            blk.norm2.weight.fill_(1.0)
            if getattr(blk, "proj", None) is not None:
                blk.proj.weight.copy_(torch.eye(*blk.proj.weight.shape))
            d = blk.attn.dim_out
            blk.attn.qkv.weight[d:2 * d, 0] = 50.0  # keys: feature 0, queries: constant 1 -> attend to the patch
            blk.attn.qkv.bias[:d] = 1.0
        hiera.norm.weight.fill_(1.0)
        hiera.patch_embed.proj.weight[0] = 1.0  # feature 0 = the patch's voxel sum
        hiera.patch_embed.proj.bias[1] = 1.0  # a constant second feature, so LayerNorm keeps feature 0's contrast
    rel = hiera_rollout(enc, x)
    assert rel.shape == x.shape
    torch.testing.assert_close(rel.sum(), torch.tensor(1.0), rtol=1e-5, atol=1e-6)
    peak = torch.nonzero(rel[0, 0] == rel.max())
    assert peak.min(0).values.tolist() == [2, 8, 14, 4] and peak.max(0).values.tolist() == [3, 9, 15, 5]
