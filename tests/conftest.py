"""Suite-wide test set-up.

``TRITON_INTERPRET=1`` must be in the environment before triton is first imported anywhere in the
process: triton decorates its own ``tl`` standard-library functions at import, and DeepSpeed imports
triton, so a test module collected before ``tests/kernels`` (adapters, finetune) would otherwise leave
those functions compiled for a GPU and the interpreted kernels fail. It only changes how Triton
kernels run on CPU tensors; nothing else in the suite launches Triton kernels on CPU.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"


def pytest_addoption(parser):
    """``--fuzz-count N``: mutated files per format in ``tests/fuzz`` (default: a small count CI runs)."""
    parser.addoption("--fuzz-count", type=int, default=None,
                     help="fuzz cases per input format in tests/fuzz (default 8; raise it for longer runs)")
