"""Channel and temporal encodings: closed forms, permutation equivariance, padding."""
from __future__ import annotations

import math

import numpy as np
import torch

from foundation.modalities.eeg.encoding import ChannelEncoding, TemporalEncoding, conduction_kernel


def _positions(B: int = 2, C: int = 6) -> torch.Tensor:
    return torch.randn(B, C, 3, generator=torch.Generator().manual_seed(0)) * 0.05


def test_kernel_matches_closed_form():
    pos = _positions(1, 5)
    tau = torch.tensor(0.08)
    d = np.linalg.norm(pos[0, :, None].numpy() - pos[0, None].numpy(), axis=-1)
    k = np.exp(-d / 0.08)
    k /= k.sum(1, keepdims=True)
    torch.testing.assert_close(conduction_kernel(pos, tau)[0], torch.tensor(k, dtype=torch.float32), atol=1e-6, rtol=1e-5)


def test_tau_is_softplus_of_a_and_learnable():
    enc = ChannelEncoding(16, tau_init=0.08)
    assert math.isclose(float(enc.tau.detach()), 0.08, rel_tol=1e-6)
    enc(_positions()).sum().backward()
    assert enc.a.grad is not None and enc.a.grad.abs().sum() > 0


def test_channel_encoding_is_invariant_to_channel_order():
    torch.manual_seed(0)
    enc = ChannelEncoding(16)
    pos = _positions()
    perm = torch.randperm(pos.shape[1])
    torch.testing.assert_close(enc(pos)[:, perm], enc(pos[:, perm]), atol=1e-6, rtol=1e-5)


def test_padded_channels_do_not_change_real_ones():
    torch.manual_seed(0)
    enc = ChannelEncoding(16)
    pos = _positions(1, 4)
    padded = torch.cat([pos, torch.zeros(1, 3, 3)], 1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    out = enc(padded, mask)
    torch.testing.assert_close(out[:, :4], enc(pos), atol=1e-6, rtol=1e-5)
    assert out[:, 4:].abs().sum() == 0
    k = conduction_kernel(padded, enc.tau, mask)
    assert k[..., 4:].abs().sum() == 0 and torch.allclose(k.sum(-1), torch.ones(1, 7))


def test_temporal_basis_closed_form():
    enc = TemporalEncoding(8, n_freqs=3, f_min=0.01, f_max=0.5, n_decays=2, tau_min=1.0, tau_max=100.0)
    t = torch.tensor([0.5, 3.5])
    f = np.logspace(-2, np.log10(0.5), 3)
    taus = np.array([1.0, 100.0])
    want = np.concatenate([np.sin(2 * np.pi * f * t[:, None].numpy()), np.cos(2 * np.pi * f * t[:, None].numpy()),
                           np.exp(-t[:, None].numpy() / taus)], 1)
    torch.testing.assert_close(enc.basis(t), torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=1e-5)
    assert enc(t).shape == (2, 8)
