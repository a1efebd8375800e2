"""torchrun support shared by the tools: the process group (its backend follows the device), gathering, barriers."""
from __future__ import annotations

import os

import torch

__all__ = ["backend_for", "init_distributed", "rank_device", "gather_objects", "barrier", "finish"]


def backend_for(device: str | torch.device) -> str:
    """NCCL for CUDA devices (when this torch has it), gloo otherwise (CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        import torch.distributed as dist

        if not dist.is_nccl_available():
            raise RuntimeError(f"device={device}: this torch build has no NCCL backend for CUDA process groups")
        return "nccl"
    return "gloo"


def rank_device(device: str | torch.device) -> torch.device:
    """The device this rank should use: ``cuda`` means ``cuda:$LOCAL_RANK`` under torchrun; others unchanged."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def init_distributed(device: str | torch.device = "cpu") -> tuple[int, int]:
    """(rank, world size).  Under torchrun (``WORLD_SIZE`` > 1) joins the process group, with NCCL when ``device`` is
    CUDA (each rank on ``cuda:$LOCAL_RANK``) and gloo on the CPU; a single process returns (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    dev = rank_device(device)
    if not dist.is_initialized():
        backend = backend_for(dev)
        if backend == "nccl":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def gather_objects(obj, world_size: int) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if world_size <= 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(world_size: int) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def finish(world_size: int) -> None:
    """Leave the process group (no-op in a single process or when none was joined)."""
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
