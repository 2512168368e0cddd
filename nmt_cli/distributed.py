"""Multi-process training through `torch.distributed`, started by torchrun.

torchrun starts one process per device and tells each who it is through environment
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every process builds the
same model, DDP broadcasts rank 0's initial weights and averages gradients in backward, and
each process reads its own slice of every update's batches. Rank 0 alone logs and writes
checkpoints. Backends: NCCL between GPUs, gloo between CPU processes (which is how the test
suite checks all of this on a laptop).

`nmt train --nproc N` runs torchrun for one machine; several machines use torchrun's own
rendezvous flags (see the README).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from collections.abc import Sequence

import torch
import torch.distributed as torch_dist

# Rank 0 validates (a full beam search over the validation set) while the others wait in a
# collective; the default timeouts (10 min for NCCL) would kill a big model's validation.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)


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
        """Rank 0's value of `flag`, on every process."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)], device=self._collective_device())
        torch_dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on some process."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)], device=self._collective_device())
        self.all_reduce_sum(tensor)
        return bool(tensor.item())

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op for one process)."""
        if self.enabled:
            torch_dist.barrier()

    def _collective_device(self) -> torch.device:
        if torch_dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE_PROCESS = Distributed()


def from_environment() -> Distributed:
    """Read torchrun's variables; without them this is a single-process run."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS
    return Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world_size)


def start(dist: Distributed, device: torch.device) -> torch.device:
    """Join the process group; return the device this process trains on."""
    if not dist.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
    else:
        torch_dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return device


def stop(dist: Distributed) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def launch(nproc: int, nmt_args: Sequence[str]) -> int:
    """Run `torchrun --standalone --nproc_per_node N -m nmt_cli <nmt_args>`; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "nmt_cli", *nmt_args]  # fmt: skip
    return subprocess.run(command, check=False).returncode
