"""Host-memory setting of a training process: keep freed memory for reuse instead of handing it back.

glibc's ``malloc`` serves large blocks (above a threshold that adapts, up to 32 MiB) with ``mmap`` and returns them
to the kernel on ``free``; the next step's tensor of the same size then faults in every page again (a zero-filled
page per 4 KiB). A training step allocates and frees the same large activations every step, so on CPU a share of
the step goes to page faults: on SLIM-Brain-tiny, whose stage-1 activations are [27648, 96..192] floats, the
profiler books it to the first op that writes each buffer (the ``copy_`` of ``addmm``'s bias), about a fifth of
the step (``benchmarks/RESULTS.md``, "Issue 16, fewer ops in the eager step"). This is why PyTorch's CPU
performance guide recommends a caching allocator (jemalloc, tcmalloc); :func:`keep_freed_memory` gets the same
reuse from glibc itself with ``mallopt``: blocks come from the heap and freed memory stays mapped for the next
step. Resident memory then stays at the process's peak instead of shrinking between steps; the peak is unchanged.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # free memory at the heap's top is kept (the largest int mallopt takes)


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (this process; call once, before training).

    Returns:
        True where the setting took (Linux with glibc); False elsewhere (macOS, musl, Windows), where nothing
        changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
