"""One process or a torchrun group (facebookresearch/mae `util/misc.py`'s `init_distributed_mode`): gloo on CPU,
nccl on CUDA; the task tears down only a group it made."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tasks import TaskContext


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this task initialised the process group and tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(ctx: TaskContext, device: torch.device) -> Dist:
    """torchrun's environment -> a process group (gloo on CPU, nccl on CUDA); a single process otherwise."""
    if ctx.launcher == "none" and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(f"launcher {ctx.launcher!r} needs the environment variable(s) {', '.join(missing)} "
                           f"(set by torchrun)")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns)


def resolve_device(ctx: TaskContext, local_rank: int) -> torch.device:
    device = torch.device(ctx.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {ctx.device!r} was asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
