"""varlen_attention: every bad input raises a ConfigError (a ValueError) naming both sides."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from foundation.errors import ConfigError
from foundation.kernels import varlen_attention


def _qkv(t=6, h=2, d=16, dtype=torch.float32):
    return [torch.randn(t, h, d, dtype=dtype) for _ in range(3)]


CU = torch.tensor([0, 2, 6], dtype=torch.int32)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda q, k, v: (q, k[:5], v, CU, 4), r"same shape \[T, H, Dh\], received q \[6, 2, 16\], k \[5, 2, 16\]"),
        (lambda q, k, v: (q[None], k, v, CU, 4), r"q must be packed \[T, H, Dh\], received shape \[1, 6, 2, 16\]"),
        (lambda q, k, v: (q, k.half(), v, CU, 4), "share one dtype, received q torch.float32, k torch.float16"),
        (lambda q, k, v: (q.int(), k, v, CU, 4), "q has dtype torch.int32; expected one of float32"),
        (lambda q, k, v: (q, k, v, CU.long(), 4), "1-D int32 tensor .* dtype torch.int64"),
        (lambda q, k, v: (q, k, v, torch.tensor([0, 4, 3, 6], dtype=torch.int32), 4),
         r"must not decrease, received cu_seqlens\[1\] = 4 > cu_seqlens\[2\] = 3"),
        (lambda q, k, v: (q, k, v, torch.tensor([0, 2, 5], dtype=torch.int32), 4),
         r"cu_seqlens\[-1\] = 5 does not match the token count T = 6"),
        (lambda q, k, v: (q, k, v, torch.tensor([1, 2, 6], dtype=torch.int32), 4), r"must start at 0, received .* = 1"),
        (lambda q, k, v: (q, k, v, CU, 3), r"max_seqlen = 3 is shorter than the longest sequence \(4\)"),
        (lambda q, k, v: (q, k, v, CU, -1), "max_seqlen must be a non-negative int, received -1"),
    ],
)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_bad_inputs_raise(make, match, backend):
    with pytest.raises(ConfigError, match=match):
        varlen_attention(*make(*_qkv()), backend=backend, validate=True)


def test_value_checks_run_only_when_asked():
    """validate=False (the default) makes no host copy of cu_seqlens; shapes, dtypes and devices are still checked."""
    q, k, v = _qkv()
    bad = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(ConfigError, match="does not match the token count"):
        varlen_attention(q, k, v, bad, 4, validate=True)
    good = varlen_attention(q, k, v, CU, 4)
    torch.testing.assert_close(good, varlen_attention(q, k, v, CU, 4, validate=True))
    with pytest.raises(ConfigError, match="1-D int32"):  # static checks still run
        varlen_attention(q, k, v, CU.long(), 4)


def test_default_call_reads_no_tensor_values(monkeypatch):
    """No .tolist() / .item() on cu_seqlens in a default call (on CUDA each would be a device synchronisation)."""
    q, k, v = (t.requires_grad_(True) for t in _qkv())
    import foundation.kernels.varlen as varlen_mod

    def refuse(*args, **kwargs):
        raise AssertionError("a value check ran without validate=True")

    monkeypatch.setattr(varlen_mod, "_check_values", refuse)
    varlen_attention(q, k, v, CU, 4).sum().backward()
    with pytest.raises(AssertionError, match="without validate=True"):
        varlen_attention(q, k, v, CU, 4, validate=True)


def test_config_error_is_a_value_error_and_backend_names_are_checked():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown backend 'trition'; did you mean 'triton'"):
        varlen_attention(q, k, v, CU, 4, backend="trition")
    with pytest.raises(ConfigError, match="unknown mode 'pack'; did you mean 'packed'"):
        varlen_attention(q, k, v, CU, 4, mode="pack")


def test_triton_backend_rejects_unsupported_head_dim_and_fp64():
    q, k, v = _qkv(d=48)
    with pytest.raises(ConfigError, match=r"supports head dims \[16, 32, 64, 128\], received Dh = 48"):
        varlen_attention(q, k, v, CU, 4, backend="triton")
    q, k, v = _qkv(dtype=torch.float64)
    with pytest.raises(ConfigError, match="q has dtype torch.float64"):
        varlen_attention(q, k, v, CU, 4, backend="triton")


def test_triton_on_cpu_without_interpreter_is_refused():
    code = (
        "import torch\nfrom foundation.kernels import varlen_attention\n"
        "q = torch.randn(4, 1, 16)\ncu = torch.tensor([0, 4], dtype=torch.int32)\n"
        "try:\n    varlen_attention(q, q, q, cu, 4, backend='triton')\n"
        "except ValueError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert "needs CUDA tensors (received cpu) or TRITON_INTERPRET=1" in res.stdout, res.stderr
