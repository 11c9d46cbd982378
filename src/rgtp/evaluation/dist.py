"""Running under ``torchrun``: process-group setup and the sharding rule (CPU uses gloo, CUDA uses NCCL)."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "barrier", "cleanup", "gather", "init_distributed", "setup", "shard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a single process needs nothing)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        # Shards finish at different times; the default 30-minute collective timeout is too short for long runs.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=12))
        logger.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the ``torchrun`` process group if there is one; returns it and this process's device
    (``cuda:<local rank>`` when several processes share a machine's GPUs)."""
    info = init_distributed(device)
    if info.world > 1 and device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
    return info, device


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(n: int, info: DistInfo) -> range:
    """Indices of the work units this process owns (round robin, so long and short units spread evenly)."""
    return range(info.rank, n, info.world)


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` in a single process)."""
    if info.world == 1:
        return [obj]
    parts: list[Any] = [None] * info.world
    dist.all_gather_object(parts, obj)
    return parts
