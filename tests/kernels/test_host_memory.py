"""keep_freed_memory (issue 16): a freed large tensor's pages stay with the process for the next one (resident
memory read from /proc), where by default glibc hands them back and the next tensor faults them in again."""
from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys, torch
from foundation.kernels.host_memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss_mib()
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
del x
print(took, rss_mib() - before)
"""


def _run(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    took, kept = out.stdout.split()
    return took, float(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")
def test_freed_pages_stay_with_the_process_only_when_asked():
    took, kept = _run("keep")
    assert took == "True"
    assert kept > 48  # the 64 MiB stay resident for reuse
    _, default = _run("default")
    assert default < 16  # glibc's default returns the mmapped block on free
