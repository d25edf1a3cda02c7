"""The hand-written backward of ASH, hard ASH, SELU, top-k ReLU, Dice, ProAct, EvoNorm-B0 and EvoNorm-S0 against
the autograd formulas they replace: outputs, input gradients, parameter gradients and running statistics equal.

The reference forwards below are the layers' code before the hand-written backward (commit b45ef54; SELU, hard ASH
and top-k ReLU before issue 16's compiled-speed round), kept here verbatim in functional form, so autograd
differentiates them the way it used to.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers.evo_norm import EvoNorm2dB0, EvoNorm2dS0

from foundation.layers import ASH, SELU, Dice, EvoNormB0, EvoNormS0, HardASH, ProAct, TopKReLU
from foundation.layers._shape import along, feature_axis, stat_dtype
from foundation.layers.evo_norm import _from_bcl, _to_bcl


def _old_ash(m: ASH, x: torch.Tensor) -> torch.Tensor:
    dims = (m.dim,) if isinstance(m.dim, int) else tuple(m.dim)
    axes = tuple(feature_axis(x, d, None, "ASH") for d in dims)
    xf = x.to(stat_dtype(x))
    var, mean = torch.var_mean(xf, dim=axes, correction=0, keepdim=True)
    thr = (mean + m.z_k.to(xf.dtype) * var.sqrt()).to(x.dtype)
    return x * torch.sigmoid(m.alpha.to(x.dtype) * (x - thr))


def _old_hard_ash(m: HardASH, x: torch.Tensor) -> torch.Tensor:
    dims = (m.dim,) if isinstance(m.dim, int) else tuple(m.dim)
    axes = tuple(feature_axis(x, d, None, "HardASH") for d in dims)
    xf = x.to(stat_dtype(x))
    var, mean = torch.var_mean(xf, dim=axes, correction=0, keepdim=True)
    thr = (mean + m.z_k.to(xf.dtype) * var.sqrt()).to(x.dtype)
    return x * (x >= thr.detach()).to(x.dtype)


def _old_selu(m: SELU, x: torch.Tensor) -> torch.Tensor:
    return F.selu(x)


def _old_topk(m: TopKReLU, h: torch.Tensor) -> torch.Tensor:
    axis = feature_axis(h, m.dim, None, "TopKReLU")
    r = torch.relu(h)
    values, index = r.topk(m.num_kept(h.shape[axis]), dim=axis)
    return torch.zeros_like(r).scatter(axis, index, values)


def _old_dice(m: Dice, s: torch.Tensor) -> torch.Tensor:
    axis = feature_axis(s, m.dim, m.num_features, "Dice")
    sf = s.to(stat_dtype(s)).movedim(axis, 1)
    running_mean, running_var = m.running_mean, m.running_var
    if sf.dtype != running_mean.dtype:
        running_mean, running_var = running_mean.to(sf.dtype), running_var.to(sf.dtype)
    z = F.batch_norm(sf, running_mean, running_var, None, None, m.training, m.momentum, m.eps)
    if running_mean is not m.running_mean and m.training:
        m.running_mean.copy_(running_mean)
        m.running_var.copy_(running_var)
    p = torch.sigmoid(z).movedim(1, axis).to(s.dtype)
    alpha = along(m.alpha.to(s.dtype), s, axis)
    return s * (p + alpha * (1 - p))


def _old_proact(m: ProAct, x: torch.Tensor) -> torch.Tensor:
    axis = feature_axis(x, m.dim, m.num_features, "ProAct") if (m.per_neuron or m.num_features) else 0
    lam = along(m.lam.to(x.dtype), x, axis) if m.per_neuron else m.lam.to(x.dtype)
    if m.training:
        return torch.relu(x) * torch.sigmoid(-m.k * (x - lam))
    return x * ((x >= 0) & (x <= lam)).to(x.dtype)


def _old_b0(m: EvoNormB0, x: torch.Tensor) -> torch.Tensor:
    axis = feature_axis(x, m.dim, m.num_features, "EvoNormB0")
    x3 = _to_bcl(x, axis)
    xf = x3.to(stat_dtype(x))
    if m.training:
        n = xf.numel() / xf.shape[1]
        var = xf.var(dim=(0, 2), unbiased=False)
        with torch.no_grad():
            m.running_var.copy_(m.running_var * (1 - m.momentum) + var.detach() * m.momentum * (n / (n - 1)))
    else:
        var = m.running_var
    left = along(var.add(m.eps).sqrt().to(x.dtype), x3, 1)
    inst = xf.var(dim=2, unbiased=False, keepdim=True).add(m.eps).sqrt().to(x.dtype)
    right = x3 * along(m.v.to(x.dtype), x3, 1) + inst
    x3 = x3 / torch.maximum(left, right)
    y = x3 * along(m.weight.to(x.dtype), x3, 1) + along(m.bias.to(x.dtype), x3, 1)
    return _from_bcl(y, x, axis)


def _old_s0(m: EvoNormS0, x: torch.Tensor) -> torch.Tensor:
    axis = feature_axis(x, m.dim, m.num_features, "EvoNormS0")
    x3 = _to_bcl(x, axis)
    B, C, L = x3.shape
    xg = x3.reshape(B, m.groups, C // m.groups, L)
    std = xg.to(stat_dtype(x)).var(dim=(2, 3), unbiased=False, keepdim=True).add(m.eps).sqrt()
    std = std.to(x.dtype).expand(xg.shape).reshape(B, C, L)
    x3 = x3 * torch.sigmoid(x3 * along(m.v.to(x.dtype), x3, 1)) / std
    y = x3 * along(m.weight.to(x.dtype), x3, 1) + along(m.bias.to(x.dtype), x3, 1)
    return _from_bcl(y, x, axis)


def _randomise(m: torch.nn.Module, g: torch.Generator) -> None:
    """Move every parameter off its init (alpha = 0, v = 1 would hide terms of the gradient)."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


CASES = [
    ("ash-tokens", lambda: ASH(learn_alpha=True), _old_ash, (4, 6, 32)),
    ("ash-map", lambda: ASH(learn_alpha=True, dim=(1, 2, 3)), _old_ash, (3, 8, 5, 5)),
    ("ash-hard-tokens", lambda: HardASH(k=0.2), _old_hard_ash, (4, 6, 32)),
    ("ash-hard-map", lambda: HardASH(k=0.2, dim=(1, 2, 3)), _old_hard_ash, (3, 8, 5, 5)),
    ("selu", SELU, _old_selu, (4, 6, 32)),
    ("topk-tokens", lambda: TopKReLU(k=5), _old_topk, (4, 6, 32)),
    ("topk-map", lambda: TopKReLU(k=0.25, dim=1), _old_topk, (3, 8, 5, 5)),
    ("dice-tokens", lambda: Dice(32), _old_dice, (4, 6, 32)),
    ("dice-map", lambda: Dice(8, dim=1), _old_dice, (3, 8, 5, 5)),
    ("proact-layer", lambda: ProAct(lam_init=1.0), _old_proact, (4, 6, 32)),
    ("proact-neuron", lambda: ProAct(8, per_neuron=True, lam_init=1.0, dim=1), _old_proact, (3, 8, 5, 5)),
    ("evonorm-b0-tokens", lambda: EvoNormB0(32), _old_b0, (4, 6, 32)),
    ("evonorm-b0-map", lambda: EvoNormB0(8, dim=1), _old_b0, (3, 8, 5, 5)),
    ("evonorm-s0-tokens", lambda: EvoNormS0(32, groups=4), _old_s0, (4, 6, 32)),
    ("evonorm-s0-map", lambda: EvoNormS0(8, groups=2, dim=1), _old_s0, (3, 8, 5, 5)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name,build,old,shape", CASES, ids=[c[0] for c in CASES])
def test_outputs_and_gradients_equal_the_autograd_reference(name, build, old, shape, training, dtype) -> None:
    g = torch.Generator().manual_seed(0)
    new = build().to(dtype)
    _randomise(new, g)
    ref = copy.deepcopy(new)
    new.train(training)
    ref.train(training)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = new(x), old(ref, x_ref)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-5}
    torch.testing.assert_close(y, y_ref, **tol)
    up = torch.randn(shape, generator=g, dtype=dtype)
    (y * up).sum().backward()
    (y_ref * up).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    for (pname, p), q in zip(new.named_parameters(), ref.parameters()):
        if q.grad is None:  # the hard clip of ProAct's eval form gives lam no gradient
            assert p.grad is None or not p.grad.any(), pname
            continue
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=f"{name}: gradient of {pname}")
    for (bname, b), c in zip(new.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, **tol, msg=f"{name}: buffer {bname}")


def test_proact_gradient_at_zero_input_is_zero_like_relu() -> None:
    m = ProAct(lam_init=1.0)
    x = torch.zeros(5, requires_grad=True)
    m(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(5))


@pytest.mark.parametrize("ours,theirs", [(EvoNormB0, EvoNorm2dB0), (EvoNormS0, EvoNorm2dS0)])
def test_evonorm_gradients_match_timm_after_a_step_off_init(ours, theirs) -> None:
    g = torch.Generator().manual_seed(1)
    kwargs = {"groups": 4} if ours is EvoNormS0 else {}
    a, b = ours(16, dim=1, **kwargs), theirs(16, **kwargs)  # timm computes its statistics in float32
    _randomise(a, g)
    b.load_state_dict(a.state_dict())
    for training in (True, False):
        a.train(training)
        b.train(training)
        x = torch.randn(3, 16, 6, 6, generator=g, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        up = torch.randn(3, 16, 6, 6, generator=g)
        y, y2 = a(x), b(x2)
        torch.testing.assert_close(y, y2)
        (y * up).sum().backward()
        (y2 * up).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
        theirs_params = dict(b.named_parameters())
        for n, p in a.named_parameters():
            torch.testing.assert_close(p.grad.flatten(), theirs_params[n].grad.flatten(), rtol=1e-4, atol=1e-5,
                                       msg=n)
            p.grad = theirs_params[n].grad = None


@pytest.mark.parametrize("name,build,old,shape", CASES, ids=[c[0] for c in CASES])
def test_backward_saves_only_the_input_at_full_size(name, build, old, shape) -> None:
    """Tensors of x's size kept for backward: one (x itself) instead of autograd's several."""
    m = build().double().train()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        m(x)
    full = {t.data_ptr() for t in saved if t.numel() >= x.numel()}
    assert len(full) <= 1, f"{name}: {len(full)} full-size tensors saved"


def test_hard_ash_step_passes_the_gradient_at_the_threshold_itself() -> None:
    """``clamp(sign(x - thr) + 1, max=1)`` is ``1[x >= thr]``, equality included, as the comparison it replaces."""
    from foundation.layers.ash import _HardASHFn

    thr = torch.tensor([[0.5], [-1.0]])
    x = torch.tensor([[0.5, 0.49, 2.0], [-1.0, -1.5, 0.0]], requires_grad=True)
    y = _HardASHFn.apply(x, thr)
    y.backward(torch.full_like(y, 3.0))
    assert torch.equal(y.detach(), torch.tensor([[0.5, 0.0, 2.0], [-1.0, 0.0, 0.0]]))
    assert torch.equal(x.grad, torch.tensor([[3.0, 0.0, 3.0], [3.0, 0.0, 3.0]]))


def test_selu_exp_minus_one_stays_within_one_rounding_of_expm1() -> None:
    x = torch.cat([torch.linspace(-20, 5, 10001), -torch.logspace(-12, 0, 1001)])
    torch.testing.assert_close(SELU()(x), F.selu(x), rtol=0, atol=2e-7)
