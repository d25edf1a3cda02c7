"""``fused=True``: a layer's functional core run through ``torch.compile`` (foundation/layers/compiled_core.py).

The fused layer gives the plain layer's outputs, gradients and running statistics; inside an outer
``torch.compile`` it traces with no graph break; where compiling fails it warns once and runs the plain core.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch._dynamo as dynamo

from foundation.layers import make_activation
from foundation.layers.compiled_core import CompiledCore

FUSED = ["crrelu", "ash", "ash-hard", "selu", "dice", "proact", "topk-relu", "evonorm-b0", "evonorm-s0"]


def _randomise(m: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("name", FUSED)
def test_fused_layer_equals_the_plain_one(name: str) -> None:
    plain = make_activation(name, num_features=32)
    _randomise(plain)
    fused = copy.deepcopy(plain)
    fused.fused = True
    g = torch.Generator().manual_seed(3)
    for training, shape in ((True, (3, 5, 32)), (True, (2, 7, 32)), (False, (3, 5, 32))):  # a second shape too
        plain.train(training)
        fused.train(training)
        x = (torch.randn(shape, generator=g) * 2).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y2 = plain(x), fused(x2)
        torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-6)
        up = torch.randn(shape, generator=g)
        (y * up).sum().backward()
        (y2 * up).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
        for (n, p), q in zip(plain.named_parameters(), fused.parameters()):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=n)
            p.grad = q.grad = None
        for (n, b), c in zip(plain.named_buffers(), fused.buffers()):
            torch.testing.assert_close(c, b, msg=n)


@pytest.mark.parametrize("name", FUSED)
def test_fused_layer_traces_into_an_outer_graph_without_breaks(name: str) -> None:
    layer = make_activation(name, num_features=32, fused=True).train()
    x = torch.randn(3, 5, 32)
    dynamo.reset()
    result = dynamo.explain(layer)(x)
    assert result.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in result.break_reasons]
    assert result.graph_count == 1


def _failing_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
    raise RuntimeError("no C++ compiler here")


def test_a_core_that_cannot_compile_warns_once_and_runs_plain() -> None:
    def scaled_exp(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x) * 2

    core = CompiledCore(scaled_exp, backend=_failing_backend)
    x = torch.randn(4, 3)
    dynamo.reset()
    reason = r"BackendCompilerFailed from RuntimeError: no C\+\+ compiler here"
    with pytest.warns(RuntimeWarning, match=rf"scaled_exp: torch.compile failed \({reason}\).*plain, uncompiled core"):
        y = core(x)
    torch.testing.assert_close(y, torch.exp(x) * 2)
    assert core.unavailable is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(core(x + 1), torch.exp(x + 1) * 2)


def test_a_plain_layer_does_not_compile() -> None:
    """``fused=False`` (the default) calls ``core.fn``: nothing is compiled, the wrapper stays empty."""
    from foundation.layers import ash

    layer = make_activation("ash")
    assert layer.fused is False
    layer(torch.randn(2, 8))
    assert "fused=False" in repr(layer)
    assert isinstance(ash._SOFT_CORE, CompiledCore) and ash._SOFT_CORE.fn is ash._soft_ash


def test_an_error_of_the_inputs_still_raises_and_leaves_the_core_compilable() -> None:
    def square(x: torch.Tensor) -> torch.Tensor:
        return x @ x

    core = CompiledCore(square, backend=_failing_backend)
    dynamo.reset()
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        core(torch.randn(2, 3))
    assert core.unavailable is None
