"""Process-group set-up shared by ``deepspeed pretrain.py`` (N ranks) and plain ``python pretrain.py`` (one).

Lost ranks: every collective waits at most ``timeout_s`` (``train.collective_timeout_s``), and a peer that dies
(``kill -9``, out of memory) closes its sockets, so the survivors' next collective fails at once. To say *which*
rank was lost, each rank records its host and process id in ``<run>/.ranks/rank<N>.json`` when it joins
(:meth:`DistInfo.register`); after a failed collective, :meth:`DistInfo.describe_failure` checks the recorded
processes on this host and names those that are gone.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from foundation.atomic import atomic_write_text

__all__ = ["DistInfo", "announce_op_build", "apply_timeout", "free_port", "init_distributed", "is_collective_failure", "release_shm_buffer"]

# words of the errors gloo, NCCL and the c10d store raise when a peer is gone or does not answer
_COMM_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
                 "timed out waiting", "collective operation timeout", "gloo/transport", "nccl error")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is what torch.distributed raises when a peer died, hung or the network failed."""
    if isinstance(err, torch.distributed.DistError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _COMM_MARKERS)


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux); None where /proc is not there."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    """Whether the process recorded as ``(pid, started)`` still runs (a zombie or a reused pid counts as gone)."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and (started is None or fields[19] == started)


RENDEZVOUS_S = 300.0
"""How long the ranks of a job may take to join the process group, at least (their start-up: imports, a node's
load); collectives then wait ``train.collective_timeout_s``."""


def apply_timeout(timeout_s: float) -> int:
    """Give every process group of this process the collective timeout ``timeout_s``.

    ``init_distributed`` sets it on the world group, but DeepSpeed then makes groups of its own (its clone of the
    world group, on which ZeRO reduces and gathers) with torch's default of 30 minutes; call this after
    ``deepspeed.initialize``.

    Returns:
        The number of groups updated.
    """
    from torch.distributed import distributed_c10d as c10d

    set_timeout = getattr(torch.distributed, "set_timeout", None) or c10d._set_pg_timeout  # torch < 2.10
    groups = list(c10d._world.pg_map)
    for group in groups:
        set_timeout(timedelta(seconds=timeout_s), group)
    return len(groups)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Args:
        rank, world_size, local_rank: this process's place.
        timeout_s: how long a collective waits for the other ranks.
        ranks_dir: folder of the per-rank records (host, pid); None until :meth:`register`.
    """

    rank: int
    world_size: int
    local_rank: int
    timeout_s: float = 1800.0
    ranks_dir: Path | None = None

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

    def gather(self, value: str | None) -> list[str | None]:
        """Every rank's ``value`` (short text, e.g. an error), indexed by rank, on every rank."""
        if self.world_size == 1:
            return [value]
        values: list[str | None] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def register(self, run_dir: str | Path) -> DistInfo:
        """Record this rank's host and process id under ``run_dir/.ranks`` and wait until every rank has.

        Returns:
            A copy of this DistInfo that knows where the records are (for :meth:`describe_failure`).
        """
        if self.world_size == 1:
            return self
        folder = Path(run_dir) / ".ranks"
        pid = os.getpid()
        record = {"rank": self.rank, "host": socket.gethostname(), "pid": pid, "started": _process_start(pid)}
        atomic_write_text(folder / f"rank{self.rank}.json", json.dumps(record))
        self.barrier()  # from here on every record belongs to this job
        return DistInfo(self.rank, self.world_size, self.local_rank, self.timeout_s, folder)

    def describe_failure(self, grace_s: float = 10.0) -> str:
        """Which peers a failed collective lost, as far as this rank can tell, in words.

        Peers on this host are checked by process id; peers on other hosts cannot be checked from here. A
        killed peer's sockets close before its process is gone, so a peer still there is looked at again for
        up to ``grace_s`` seconds.
        """
        deadline = time.monotonic() + grace_s
        while True:
            gone, unknown, alive = self._check_peers()
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        parts = []
        if gone:
            parts.append(f"lost {', '.join(gone)}: the process is gone (killed, or out of memory)")
        if unknown:
            parts.append(f"could not check {', '.join(unknown)}; see that rank's log")
        if alive:
            parts.append(f"{', '.join(alive)} still running but not answering (hung, or the network failed; "
                         f"collectives wait train.collective_timeout_s={self.timeout_s:g} s)")
        return "; ".join(parts) or "no peer could be checked"

    def _check_peers(self) -> tuple[list[str], list[str], list[str]]:
        gone, unknown, alive = [], [], []
        host = socket.gethostname()
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            path = None if self.ranks_dir is None else self.ranks_dir / f"rank{rank}.json"
            try:
                record = json.loads(path.read_text()) if path is not None else None
            except (OSError, ValueError):
                record = None
            if record is None or record["host"] != host:
                where = "unrecorded" if record is None else f"on host {record['host']}"
                unknown.append(f"rank {rank} ({where})")
            elif _process_alive(record["pid"], record["started"]):
                alive.append(f"rank {rank} (pid {record['pid']})")
            else:
                gone.append(f"rank {rank} (pid {record['pid']} on {host})")
        return gone, unknown, alive


def announce_op_build() -> Path | None:
    """Say so (local rank 0, stderr) when DeepSpeed is about to compile its CPU communication op.

    On a CPU accelerator ``deepspeed.init_distributed`` builds the ``deepspeed_shm_comm`` C++ extension the
    first time (about two minutes, silent); it is cached under torch's extension folder afterwards.

    Returns:
        The extension folder when a build is due, else None (built already, or not a CPU accelerator).
    """
    import sys

    import deepspeed
    from torch.utils.cpp_extension import _get_build_directory

    accelerator = deepspeed.get_accelerator()
    if accelerator.device_name() != "cpu":
        return None
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    folder = Path(_get_build_directory(builder.NAME, verbose=False))
    if any(folder.glob(f"{builder.NAME}*.so")):
        return None
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"DeepSpeed: compiling its CPU communication op {builder.NAME} (first run only, about 2 minutes; "
              f"cached in {folder})", file=sys.stderr, flush=True)
    return folder


def release_shm_buffer() -> Path | None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer from ``/dev/shm`` once every rank has mapped it.

    DeepSpeed's CPU communication op creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    (69 MB per rank) while the process group starts, maps every peer's, and never unlinks them: each multi-rank
    CPU run would leave them behind, and ``/dev/shm`` is memory. After a barrier every rank has mapped its
    peers' buffers (DeepSpeed does it inside ``init_distributed``), so each rank unlinks its own name: the
    mappings stay valid until the processes exit, and then the memory is freed.

    Returns:
        The path unlinked, or None (one process, another accelerator, or no such buffer).
    """
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    path = Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    dist.barrier()
    if not path.exists():
        return None
    path.unlink(missing_ok=True)
    return path


def init_distributed(timeout_s: float = 1800.0) -> DistInfo:
    """Join (or, alone, create) the process group through DeepSpeed.

    A launcher (``deepspeed``, ``torchrun``, a hostfile over several nodes) sets
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; a plain
    ``python`` start has none, so a one-process group on 127.0.0.1 is made.
    DeepSpeed picks the backend of its accelerator (NCCL on CUDA, gloo on CPU).

    The ranks meet (torch's rendezvous: rank 0's store waits for every rank to join) under
    ``max(timeout_s, RENDEZVOUS_S)``, and the collective timeout ``timeout_s`` is set once the group exists: a short
    collective timeout (seconds, to name a hung rank quickly) must not fail a job whose ranks merely take longer
    than that to import and start on a loaded node.

    Args:
        timeout_s: how long a collective waits for the other ranks before it fails
            (applies when this call creates the group).
    """
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not torch.distributed.is_initialized():
        announce_op_build()
        deepspeed.init_distributed(dist_backend=deepspeed.get_accelerator().communication_backend_name(),
                                   auto_mpi_discovery=False, timeout=timedelta(seconds=max(timeout_s, RENDEZVOUS_S)))
        apply_timeout(timeout_s)
        release_shm_buffer()
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        timeout_s=timeout_s,
    )
