"""Every layer of ``foundation.layers`` and both kernels' custom ops trace into one graph under ``torch.compile``.

``torch._dynamo.explain`` counts the graph breaks of a forward; a break, or an error while tracing, fails here.
Parametrised over the registries (every activation, every MLP kind) and every KAN basis, so a newly registered
layer is checked by being registered. The slow test compiles forward + backward with Inductor and compares with
eager (EvoNorm-S0's backward used to stop Inductor with an assertion).
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

from foundation.kernels import pack_visible, packed_mean, varlen_attention
from foundation.kernels.mesa import GELU8, SiLU8, Softmax8, apply_act_bits
from foundation.layers import BASES, Attention, Block, KANLinear, KArAt, make_activation, make_mlp
from foundation.registry import ACTIVATIONS, MLPS

D = 32


def _tokens() -> torch.Tensor:
    return torch.randn(3, 7, D, generator=torch.Generator().manual_seed(0))


def _packed() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Packed tokens [K, D] of 3 samples of 5, 2 and 4 visible tokens, with cu_seqlens and max_seqlen."""
    keep = [torch.tensor([0, 1, 2, 4, 6]), torch.tensor([3, 5]), torch.tensor([0, 2, 3, 6])]
    return pack_visible(_tokens(), keep)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], Callable[[], torch.Tensor]]]] = {}
for _name in ACTIVATIONS.names():
    CASES[f"activation:{_name}"] = (lambda n=_name: make_activation(n, num_features=D), lambda m: lambda: m(_tokens()))
for _name in MLPS.names():
    CASES[f"mlp:{_name}"] = (lambda n=_name: make_mlp(n, D, 2 * D, **({"rank": 8} if n == "noble" else {})),
                             lambda m: lambda: m(_tokens()))
for _basis in BASES:
    CASES[f"kan:{_basis}"] = (lambda b=_basis: KANLinear(D, D, basis=b), lambda m: lambda: m(_tokens()))
for _attn in (Attention, KArAt):
    CASES[f"{_attn.__name__}:dense"] = (lambda a=_attn: a(D, 4), lambda m: lambda: m(_tokens()))
CASES["Attention:packed-varlen"] = (lambda: Attention(D, 4), lambda m: (lambda a: lambda: m(*a))(_packed()))
CASES["Block:packed"] = (lambda: Block(D, 4, mlp="kan"), lambda m: (lambda a: lambda: m(*a))(_packed()))
CASES["Block:8-bit-activations"] = (lambda: _act_bits(Block(D, 4)), lambda m: lambda: m(_tokens()))
for _cls in (GELU8, SiLU8):  # Linear8 and LayerNorm8 are reached through apply_act_bits (the Block case)
    CASES[f"mesa:{_cls.__name__}"] = (lambda c=_cls: c(), lambda m: lambda: m(_tokens()))
CASES["mesa:Softmax8"] = (lambda: Softmax8(dim=-1), lambda m: lambda: m(_tokens()))


def _act_bits(m: nn.Module) -> nn.Module:
    apply_act_bits(m, 8)
    return m


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_traces_without_graph_breaks(case: str) -> None:
    build, call = CASES[case]
    torch.manual_seed(0)
    module = build().train()
    dynamo.reset()
    result = dynamo.explain(call(module))()
    reasons = [str(b.reason).splitlines()[0] for b in result.break_reasons]
    assert result.graph_break_count <= 0, f"{case}: {result.graph_break_count} graph breaks: {reasons}"  # -1: no graph


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_varlen_custom_op_and_packed_mean_trace_as_one_graph(backend: str) -> None:
    packed, cu, max_len = _packed()
    q, k, v = (packed.view(-1, 4, D // 4) * s for s in (1.0, 0.5, 2.0))

    def step() -> torch.Tensor:
        out = varlen_attention(q, k, v, cu, max_len, backend=backend)
        return packed_mean(out.reshape(-1, D), cu)

    dynamo.reset()
    result = dynamo.explain(step)()
    assert result.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in result.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ACTIVATIONS.names()))
def test_activation_compiles_forward_and_backward_with_inductor(name: str) -> None:
    torch.manual_seed(0)
    eager = make_activation(name, num_features=D).train()
    compiled_module = make_activation(name, num_features=D).train()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module)
    x = torch.randn(4, 6, D, generator=torch.Generator().manual_seed(1)) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    dynamo.reset()
    ya, yb = eager(xa), compiled(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
    up = torch.randn_like(x)
    (ya * up).sum().backward()
    (yb * up).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(eager.named_parameters(), compiled_module.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evonorm-s0", "evonorm-b0"])
def test_grouped_norms_compile_forward_and_backward_at_a_bench_token_shape(name: str) -> None:
    """At [16, 128, 512] (bench_step's activation table) Inductor splits loops differently from the small shape
    above; a folded per-(sample, channel) form of EvoNorm-S0's backward stopped it with an assertion there."""
    torch.manual_seed(0)
    layer = make_activation(name, num_features=512).train()
    x = torch.randn(16, 128, 512, generator=torch.Generator().manual_seed(1), requires_grad=True)
    dynamo.reset()
    y = torch.compile(layer)(x)
    (y * y).sum().backward()
    want = layer(x.detach())
    torch.testing.assert_close(y.detach(), want, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(x.grad).all()
