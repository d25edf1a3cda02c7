"""Hiera4D: equal to the official Hiera (hiera-transformer) after conversion; 4D unit deletion properties."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from foundation.errors import CheckpointError, ConfigError, DataError
from foundation.modalities.fmri.convert_hiera import convert_hiera_state_dict, hiera_config, load_hiera_weights
from foundation.modalities.fmri.hiera4d import Hiera4D, Hiera4DConfig
from foundation.modalities.fmri.hiera_utils import hiera_to_units, unit_foreground, unit_permutation

VIDEO = dict(  # hiera_base_16x224's layout (q_stride (1,2,2), mask unit (1,8,8), overlapping 3x7x7-style kernel), small
    input_size=(4, 32, 32), in_chans=3, embed_dim=16, num_heads=1, stages=(1, 2, 1, 1), q_pool=2, q_stride=(1, 2, 2),
    mask_unit_size=(1, 8, 8), mask_unit_attn=(True, True, False, False), patch_kernel=(3, 3, 3), patch_stride=(2, 2, 2),
    patch_padding=(1, 1, 1), sep_pos_embed=True,
)
GLOBAL_POOL = dict(  # q pooling inside a global-attention block (q_pool = 3), kernel == stride
    input_size=(2, 32, 32), in_chans=3, embed_dim=16, num_heads=1, stages=(1, 2, 1, 1), q_pool=3, q_stride=(1, 2, 2),
    mask_unit_size=(1, 8, 8), mask_unit_attn=(True, False, False, False), patch_kernel=(1, 2, 2), patch_stride=(1, 2, 2),
    patch_padding=(0, 0, 0), sep_pos_embed=False,
)


def _official(kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from hiera.hiera import Hiera
    torch.manual_seed(0)
    model = Hiera(num_classes=5, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # random init on both sides; non-trivial norms and biases
    return model


@pytest.mark.parametrize("kw", [VIDEO, GLOBAL_POOL], ids=["video-3d", "global-qpool"])
def test_converted_official_hiera_gives_same_features(kw):
    official = _official(kw)
    ours = load_hiera_weights(official.state_dict(), hiera_config(**kw)).eval()
    x = torch.randn(2, 3, *kw["input_size"])
    mask = torch.ones(2, ours.n_units, dtype=torch.bool)  # 1 = keep (Hiera's convention)
    mask[0, [0, 2]] = False
    mask[1, [1, 3]] = False
    with torch.no_grad():
        ref = official(x, mask=mask)  # [B, T_f * K, D] in Hiera's order (unit innermost)
        keep = [torch.nonzero(m).flatten() for m in mask]
        got, cu = ours.forward_units(x, keep)  # [U, T_f, D]
        ref_units = hiera_to_units(ref, int(mask[0].sum())).reshape(got.shape)
        torch.testing.assert_close(got, ref_units, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        assert cu.tolist() == [0, len(keep[0]), len(keep[0]) + len(keep[1])]
        # whole-input path: pooled features through the official head
        logits = official.head.act_func(official.head.projection(ours(x)))
        torch.testing.assert_close(logits, official(x), rtol=1e-4, atol=1e-5)


def test_converter_refuses_mismatched_config():
    official = _official(VIDEO)
    wrong = hiera_config(**{**VIDEO, "embed_dim": 32})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*blocks.0.attn.proj.bias: ours \(32,\) vs checkpoint \(16,\)"):
        convert_hiera_state_dict(official.state_dict(), wrong)
    with pytest.raises(CheckpointError, match="unknown Hiera arguments"):
        hiera_config(embed_dims=3)


def test_unit_permutation_matches_hiera_unroll():
    from hiera.hiera_utils import Unroll

    tokens, stride = (2, 8, 8), (1, 2, 2)
    unroll = Unroll((2, 16, 16), (1, 2, 2), [stride] * 2)
    flat = torch.arange(int(np.prod(tokens)), dtype=torch.float32).view(1, -1, 1)
    hiera_order = unroll(flat)  # [1, N, 1] in Hiera's order
    ours = unit_permutation(tokens, stride, 2)  # unit-major
    n_units = 2 * 2 * 2
    torch.testing.assert_close(hiera_to_units(hiera_order, n_units).flatten(), torch.from_numpy(ours).float())


TINY4D = Hiera4DConfig(input_size=(4, 16, 16, 16), embed_dim=8, num_heads=1, stages=(1, 1, 1), q_pool=2, q_stride=(1, 2, 2, 2),
                       mask_unit_size=(1, 4, 4, 4), mask_unit_attn=(True, True, True), patch_kernel=(2, 2, 2, 2),
                       patch_stride=(2, 2, 2, 2), patch_padding=(0, 0, 0, 0))


def test_4d_deleted_units_do_not_change_kept_units_under_mask_unit_attention():
    torch.manual_seed(1)
    model = Hiera4D(TINY4D).eval()  # only mask-unit attention: units never see each other
    x = torch.randn(2, 1, 4, 16, 16, 16)
    with torch.no_grad():
        full, _ = model.forward_units(x)  # [B * U, T_f, D]
        keep = [torch.tensor([0, 3, 5]), torch.tensor([2])]  # ragged: samples keep different numbers of units
        part, cu = model.forward_units(x, keep)
    U = model.n_units
    torch.testing.assert_close(part[:3], full[keep[0]])
    torch.testing.assert_close(part[3:], full[U + keep[1]])
    assert cu.tolist() == [0, 3, 4]


def test_4d_global_attention_ragged_batch_equals_one_sample_at_a_time():
    torch.manual_seed(2)
    cfg = Hiera4DConfig(**{**TINY4D.__dict__, "mask_unit_attn": (True, False, False)})
    model = Hiera4D(cfg).eval()
    x = torch.randn(2, 1, 4, 16, 16, 16)
    keep = [torch.tensor([0, 3, 5, 6]), torch.tensor([1, 2])]
    with torch.no_grad():
        both, _ = model.forward_units(x, keep)
        one, _ = model.forward_units(x[:1], keep[:1])
        two, _ = model.forward_units(x[1:], keep[1:])
    torch.testing.assert_close(both, torch.cat([one, two]), rtol=1e-5, atol=1e-5)


def test_forward_features_shapes_and_backward():
    model = Hiera4D(TINY4D)
    x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)  # C = 1 may be omitted
    feats = model.forward_features(x, keep=torch.tensor([[0, 1], [2, 3]]))
    assert feats.shape == (2, 2 * model.final_unit_tokens, model.embed_dim)
    feats.sum().backward()
    assert x.grad is not None and model.patch_embed.proj.weight.grad is not None


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"mask_unit_size .* must equal q_stride"):
        Hiera4DConfig(input_size=(8, 16, 16, 16), mask_unit_size=(4, 4, 4, 4), q_stride=(2, 2, 2, 2), stages=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match="dimension 0"):
        Hiera4DConfig(input_size=(12, 96, 96, 96))
    with pytest.raises(DataError, match=r"x must be \[B, 1, 4, 16, 16, 16\].*received \[1, 1, 4, 16, 16, 8\]"):
        Hiera4D(TINY4D).forward_units(torch.zeros(1, 1, 4, 16, 16, 8))
    with pytest.raises(DataError, match="received \\[1, 2, 4, 16, 16, 16\\]"):
        Hiera4D(TINY4D).forward_units(torch.zeros(1, 2, 4, 16, 16, 16))


def test_unit_foreground_counts_brain_voxels():
    mask = np.zeros((8, 8, 8), bool)
    mask[0, 0, 0] = True  # one voxel in unit (0, 0, 0)
    mask[5:, 5:, 5:] = True  # unit (1, 1, 1)
    fg = unit_foreground(mask, (4, 4, 4))
    assert fg.tolist() == [True, False, False, False, False, False, False, True]


@pytest.mark.parametrize("kw", [
    {"input_size": (4, 16, 16, 16), "patch_kernel": (1, 2, 2, 2), "patch_stride": (1, 2, 2, 2),
     "patch_padding": (0, 0, 0, 0), "q_stride": (1, 2, 2, 2), "mask_unit_size": (1, 4, 4, 4)},
    {"input_size": (4, 16, 16), "patch_kernel": (1, 3, 3), "patch_stride": (1, 2, 2), "patch_padding": (0, 1, 1),
     "q_stride": (1, 2, 2), "mask_unit_size": (1, 4, 4)},  # a conv patch embedding (3D)
], ids=["4d-linear", "3d-conv"])
def test_unit_major_embedding_equals_the_gather_by_unit_permutation(kw):
    """The unit-major tokens (one permute after the embedding) are what the old ``tok[:, perm]`` gather gave."""
    cfg = Hiera4DConfig(embed_dim=16, num_heads=1, stages=(1, 1, 1), q_pool=2, mask_unit_attn=(True, False, False),
                        **kw)
    torch.manual_seed(0)
    model = Hiera4D(cfg)
    x = torch.randn(2, 1, *cfg.input_size)
    perm = torch.from_numpy(unit_permutation(cfg.tokens, cfg.q_stride, len(cfg.stages) - 1))
    old = (model.patch_embed(x).flatten(1, -2) + model.pos())[:, perm]  # [B, N, D] in unit-major order
    new = model._unit_tokens(x)
    torch.testing.assert_close(new.reshape(old.shape), old, rtol=1e-5, atol=1e-6)
