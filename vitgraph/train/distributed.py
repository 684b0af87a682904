"""Multi-process training under `torchrun` (or any launcher that sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT): one process per GPU, DistributedDataParallel,
NCCL on GPUs and gloo on CPUs. Without those variables everything is a single process and
the helpers here do nothing."""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..diagnostics import UserError


@dataclass
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this process created the process group (and destroys it)
    held: ExitStack = field(default_factory=ExitStack)  # what the run holds until it ends (its folder's lock)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all ranks (in place); identity for one process."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        self.held.close()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str | None) -> torch.device:
    """"cpu", "cuda", "cuda:N" or None/"auto" (CUDA when there is one)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but this torch sees no CUDA device", hint="use --device cpu")
    return device


def setup(device_name: str | None) -> Context:
    """The process's rank and device; initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_name)
    if world <= 1:
        return Context(0, 1, 0, device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Context(rank, world, local_rank, device, owns)
