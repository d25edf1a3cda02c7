"""The ranks of a job may join later than the collective timeout (a loaded node's start-up), and still meet."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.pretrain.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
RANK = """
import sys, time
import torch
rank, delay = int(sys.argv[1]), float(sys.argv[2])
time.sleep(delay)
from foundation.pretrain.distributed import init_distributed
dist = init_distributed(timeout_s=2.0)
x = torch.tensor([float(rank + 1)])
torch.distributed.all_reduce(x)
print("sum", float(x), flush=True)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_a_rank_joining_after_the_collective_timeout_still_meets_the_others(tmp_path):
    # collectives wait 2 s; rank 1 starts 8 s after rank 0 (before the fix, rank 0's store gave up after 2 s:
    # "Timed out after 3 seconds waiting for clients. 1/2 clients joined.")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(8.0 * r)], cwd=tmp_path,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "sum 3.0" in out, out + err[-2000:]
