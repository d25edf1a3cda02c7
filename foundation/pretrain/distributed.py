"""Process-group set-up shared by ``deepspeed pretrain.py`` (N ranks) and plain ``python pretrain.py`` (one)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

__all__ = ["DistInfo", "init_distributed", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small float tensor over ranks (a no-op for one process)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
        return values


def init_distributed() -> DistInfo:
    """Join (or, alone, create) the process group through DeepSpeed.

    A launcher (``deepspeed``, ``torchrun``, a hostfile over several nodes) sets
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; a plain
    ``python`` start has none, so a one-process group on 127.0.0.1 is made.
    DeepSpeed picks the backend of its accelerator (NCCL on CUDA, gloo on CPU).
    """
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=deepspeed.get_accelerator().communication_backend_name(),
                                   auto_mpi_discovery=False)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
