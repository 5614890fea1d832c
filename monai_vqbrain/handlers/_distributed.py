"""Helpers for handlers that must behave under DDP: sum across ranks, and act on rank 0 only."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, or when not running distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks in place when distributed; return it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor
