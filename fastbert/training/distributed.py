"""Devices and data parallelism for the training entry points.

``setup_distributed`` picks the device and, under torchrun (WORLD_SIZE > 1), joins the process group (nccl with
one GPU per local rank on CUDA, gloo on CPU). The helpers below are no-ops in a single process, so the entry
points call them unconditionally. ``check_on_all_ranks`` is how validation stays collective: if one rank finds
bad input, every rank raises the same ``CLIError`` and none is left waiting in a collective.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import torch

from .errors import CLIError, one_line


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> DistInfo:
    """Pick the device and join the process group when WORLD_SIZE > 1. ``device`` None = CUDA when available,
    else CPU; a bad name or an absent CUDA device is a CLIError."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine")
        if world_size > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(dist_info: DistInfo) -> None:
    if dist_info.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: torch.Tensor, dist_info: DistInfo) -> list[float]:
    """``values`` summed over ranks (in place), as a list of Python floats."""
    if dist_info.distributed:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values.tolist()


def all_gather_objects(obj: Any, dist_info: DistInfo) -> list:
    if not dist_info.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, dist_info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist_info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_on_all_ranks(body: Callable[[], Any], dist_info: DistInfo) -> Any:
    """Run ``body`` on every rank; if any rank raised CLIError, every rank raises it (rank 0's message first), so
    no rank is left waiting in a collective."""
    error = None
    result = None
    try:
        result = body()
    except CLIError as exc:
        error = one_line(exc)
    errors = [e for e in all_gather_objects(error, dist_info) if e]
    if errors:
        raise CLIError(errors[0])
    return result


def replicas_in_sync(model: torch.nn.Module, dist_info: DistInfo) -> bool:
    """True when every rank holds bit-identical parameters (checked through a float64 checksum per tensor)."""
    if not dist_info.distributed:
        return True
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    gathered = all_gather_objects(sums.tolist(), dist_info)
    return all(g == gathered[0] for g in gathered)
