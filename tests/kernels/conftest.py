"""Run the Triton kernels on CPU tensors with the Triton interpreter.

triton 3.8 reads TRITON_INTERPRET (``triton.knobs.runtime.interpret``) when a
``@triton.jit`` function is decorated, i.e. when
``foundation.kernels.triton_varlen`` is first imported, so it must be in the
environment before that import. Nothing else in the suite imports that module
on CPU (``backend="auto"`` picks the reference for CPU tensors).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids spin contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
