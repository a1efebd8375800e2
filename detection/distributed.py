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
        # ranks wait for each other after uneven work (proposal extraction, the last shards): NCCL's default limit of
        # 10 minutes would kill a long run; DET_DIST_TIMEOUT_MIN sets it (default 3 hours)
        dist.init_process_group(backend, timeout=_timeout())
    return dist.get_rank(), dist.get_world_size()


def _timeout():
    from datetime import timedelta

    return timedelta(minutes=float(os.environ.get("DET_DIST_TIMEOUT_MIN", "180")))


_OBJECT_GROUP = None


def _object_group():
    """A gloo group for moving Python objects (results, counts): CPU memory, not GPU memory, whatever the default
    backend is."""
    global _OBJECT_GROUP
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None  # the default group already is gloo
    if _OBJECT_GROUP is None:
        _OBJECT_GROUP = dist.new_group(backend="gloo", timeout=_timeout())
    return _OBJECT_GROUP


def gather_objects(obj, world_size: int) -> list | None:
    """Every rank's ``obj`` in rank order, on rank 0 only (other ranks get ``None``); ``[obj]`` in a single
    process.  Objects travel over gloo (CPU) even when the default process group is NCCL."""
    if world_size <= 1:
        return [obj]
    import torch.distributed as dist

    rank = dist.get_rank()
    out = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, out, dst=0, group=_object_group())
    return out


def barrier(world_size: int) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def finish(world_size: int) -> None:
    """Leave the process group (no-op in a single process or when none was joined)."""
    global _OBJECT_GROUP
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _OBJECT_GROUP = None
