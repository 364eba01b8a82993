"""Data-parallel training under ``torchrun``: detection from the environment and small helpers.

``torchrun --nproc-per-node N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without
them training runs in one process. The process group uses NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the process group if torchrun started us and nobody joined yet; True if we did."""
    if not info.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few scalars over all ranks (identity in a single process)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def same_count(items: list[Any], device: torch.device, info: DistInfo) -> list[Any]:
    """``items`` padded with copies of its first item to the longest rank's length (a rank
    with no items must not call this). Under FSDP every forward and backward all-gathers
    parameters, so all ranks must make the same number of calls; the caller gives the
    padding zero weight (it counts ``len(items)`` before padding)."""
    if not info.enabled:
        return items
    t = torch.tensor([len(items)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return items + [items[0]] * (int(t.item()) - len(items))


def any_rank(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True on every rank when it is True on any: ranks stop at the same step."""
    return all_reduce_sum([1.0 if flag else 0.0], device, info)[0] > 0


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextlib.contextmanager
def process_setup(info: DistInfo, dev: torch.device) -> Iterator[None]:
    """Join the torchrun process group if there is one; deterministic kernels on CPU."""
    joined = init_distributed(info, dev)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if joined:
            dist.destroy_process_group()


def device_for(requested: str, info: DistInfo) -> torch.device:
    """The device this process trains on: under torchrun on GPUs, its local rank's GPU."""
    from ragtune.models import pick_device

    dev = pick_device(requested)
    if dev.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return dev
