"""Multi-process training through `torch.distributed`, started by torchrun.

torchrun starts one process per device and tells each who it is through environment
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every process builds the
same model, DDP broadcasts rank 0's initial weights and averages gradients in backward, and
each process reads its own slice of every update's batches. Rank 0 alone logs and writes
checkpoints. Backends: NCCL between GPUs, gloo between CPU processes (which is how the test
suite checks all of this on a laptop).

`nmt train --nproc N` launches the processes of one machine as `torchrun --standalone` would
(through its Python API); several machines use torchrun's own rendezvous flags (see the
README). A process that dies or hangs makes the others fail their next collective, which
`train` reports as one line instead of hanging.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from nmt_cli.errors import DistributedError
from nmt_cli.stop_signals import FORWARDED_SIGNALS, stop_exit_code


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` in place over all processes (a no-op for one process)."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's value of `flag`, on every process (between hosts: see `_flag_group`)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)])
        torch_dist.broadcast(tensor, src=0, group=_flag_group)
        return bool(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on some process."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)])
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM, group=_flag_group)
        return bool(tensor.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` (any picklable value, tensors included), on every process: how the
        others get a checkpoint that only rank 0 can read."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op for one process)."""
        if self.enabled:
            torch_dist.barrier()


SINGLE_PROCESS = Distributed()

# The flags every update exchanges (stop signals, the time limit) travel between the hosts
# over gloo even when the gradients go over NCCL: a flag on the GPU would make the host wait
# for the GPU's queue to drain at every update. None: the default group is gloo already.
_flag_group: Any = None


def from_environment() -> Distributed:
    """Read torchrun's variables; without them this is a single-process run."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS
    return Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world_size)


def start(dist: Distributed, device: torch.device, timeout_seconds: float) -> torch.device:
    """Join the process group; return the device this process trains on.

    A collective that waits longer than `timeout_seconds` for another process raises instead
    of hanging forever (NCCL's default of 10 minutes would also kill a long validation).
    """
    if not dist.enabled:
        return device
    timeout = datetime.timedelta(seconds=timeout_seconds)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl", device_id=device, timeout=timeout)
        global _flag_group
        _flag_group = torch_dist.new_group(backend="gloo", timeout=timeout)
    else:
        torch_dist.init_process_group("gloo", timeout=timeout)
    return device


def is_collective_failure(exc: BaseException) -> bool:
    """Whether `exc` comes from a collective whose peer died (connection reset) or hung
    (timeout): NCCL raises `DistError`s, gloo plain RuntimeErrors that name gloo."""
    return isinstance(exc, torch_dist.DistError) or (
        isinstance(exc, RuntimeError) and "gloo" in str(exc)
    )


def collective_failure_reason(exc: BaseException) -> str:
    """The first sentence of a backend's message, without its source-file prefix."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line).split(". ")[0]


def resume_advice(run_dir: Path) -> str:
    """What to do after a run stopped in the middle: the same command continues it."""
    last = run_dir / "last.pt"
    if last.exists():
        return f"{last} is intact: run the same command again to continue from it"
    return "no checkpoint was written yet: run the same command again to start over"


def stop(dist: Distributed) -> None:
    global _flag_group
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()  # with every subgroup
    _flag_group = None


def launch(nproc: int, nmt_args: Sequence[str], run_dir: Path) -> int:
    """Run `nmt <nmt_args>` in `nproc` processes on this machine; their exit code, or a
    `DistributedError` naming a process that was killed.

    What `torchrun --standalone --nproc_per_node N -m nmt_cli ...` does, through its Python
    API, so that a failure reads as one line instead of the launcher's report. When one
    process dies the launcher stops the others. The processes run in sessions of their own,
    so Ctrl-C (or SIGTERM) reaches the launcher alone; it passes the signal on once, each
    process stops cleanly with a checkpoint, and the launcher waits for them. SIGUSR1 (what
    SLURM sends before a time limit) is passed on too.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default: processes share cores
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        signals_to_handle=FORWARDED_SIGNALS,
    )
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "nmt_cli", *nmt_args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode >= 0:
            return failure.exitcode  # 1: it printed its error; 130: interrupted
        raise DistributedError(
            f"training process {rank} was killed ({failure.signal_name()}) and the others "
            f"were stopped; {resume_advice(run_dir)}"
        ) from None
    except SignalException as exc:  # the processes have saved last.pt and said how to go on
        return stop_exit_code(signal.Signals(exc.sigval).name)
    return 0
