"""torchrun / DistributedDataParallel context: who am I, which device, which backend."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on CPU; each process takes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if use_cuda:
        dev = torch.device("cuda", local_rank if world > 1 or device in ("auto", "cuda") else
                           torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a scalar tensor over all processes (for logging)."""
    if not ctx.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / ctx.world_size
