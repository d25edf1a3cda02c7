"""Suite-wide test set-up.

``TRITON_INTERPRET=1`` must be in the environment before triton is first imported anywhere in the
process: triton decorates its own ``tl`` standard-library functions at import, and DeepSpeed imports
triton, so a test module collected before ``tests/kernels`` (adapters, finetune) would otherwise leave
those functions compiled for a GPU and the interpreted kernels fail. It only changes how Triton
kernels run on CPU tensors; nothing else in the suite launches Triton kernels on CPU.
"""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"


def pytest_addoption(parser):
    """``--fuzz-count N``: mutated files per format in ``tests/fuzz`` (default: a small count CI runs)."""
    parser.addoption("--fuzz-count", type=int, default=None,
                     help="fuzz cases per input format in tests/fuzz (default 8; raise it for longer runs)")


_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _distributed_env_stays_with_its_test():
    """An in-process engine run sets ``RANK``/``MASTER_PORT``... in ``os.environ`` (a one-rank group on a free
    port, whose store this process keeps listening on). Restore them after each test, so a later test's
    subprocess (``foundation pretrain`` as a user runs it) picks its own port instead of inheriting that one."""
    before = {key: os.environ.get(key) for key in _DIST_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
