"""Distributed setup for ``torchrun``: one small helper, as in torchvision's reference scripts.

``torchrun --nproc_per_node=N -m l0_sparsity train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them, initializes the process group (NCCL on GPUs, gloo on
CPU) and picks the device. Without them it is a single process. A process group that the caller
initialized before (e.g. a test harness) is used as it is and left for the caller to destroy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

import conopt.distributed


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the world size and its device.

    Attributes:
        rank: This process's global rank.
        world_size: The number of processes.
        local_rank: This process's rank on its node (its GPU index).
        device: The device this process trains on.
        owns_group: Whether :func:`setup` initialized the process group (and :func:`teardown`
            should destroy it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether a process group of more than one process is running."""
        return self.world_size > 1


def setup(device: str = "auto") -> DistributedContext:
    """Initialize the process group from ``torchrun``'s variables, if present.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cuda"`` or ``"cpu"``.

    Returns:
        The process's rank, world size and device.

    Raises:
        ValueError: For an unknown device, or CUDA asked for but unavailable.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but CUDA is not available.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns_group = True
    return DistributedContext(rank, world_size, local_rank, torch_device, owns_group)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (nothing happens in a single process).

    Args:
        tensor: A tensor on this process's device.

    Returns:
        ``tensor``, for chaining.
    """
    if conopt.distributed.world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def teardown(context: DistributedContext | None = None) -> None:
    """Destroy the process group if :func:`setup` initialized it.

    Args:
        context: The context :func:`setup` returned; ``None`` destroys any initialized group.
    """
    if context is not None and not context.owns_group:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
