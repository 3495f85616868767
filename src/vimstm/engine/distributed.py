"""torch.distributed helpers that also work in a single plain process.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_distributed` joins the
process group through ``env://`` with NCCL on CUDA and gloo on CPU; without it every helper is a
no-op, so the same code runs both ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vimstm.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, its device, and whether on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    enabled: bool


def _on() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun process group if there is one; return this process's place.

    The backend is NCCL for CUDA devices and gloo for the CPU.

    Args:
        device: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; a
            ``"cuda"`` without an index also gets the local rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else 0)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {dev} was asked for but CUDA is not available here; "
                              "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {dev} does not exist: {torch.cuda.device_count()} "
                              "GPU(s) visible")
        torch.cuda.set_device(dev)
    if world <= 1 and not _on():
        return DistInfo(0, 1, 0, dev, False)
    if not _on():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)


def get_rank() -> int:
    return dist.get_rank() if _on() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _on() else 1


def is_main() -> bool:
    """True on rank 0, and in a plain single process."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op without a process group)."""
    if _on():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _reduce(t: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if not _on():
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        buf = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(buf, op=op)
        t.copy_(buf.to(t.device))
    else:
        dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place and return it (unchanged without a process group)."""
    return _reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all ranks, in place."""
    return _reduce(t, dist.ReduceOp.MAX)


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if _on():
        dist.destroy_process_group()
