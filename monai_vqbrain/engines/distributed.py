"""Helpers for multi-process (DDP) training launched with ``torchrun``, as ``bundle/configs/multi_gpu_*.json`` do.

The VQ-VAE's codebook buffers are updated inside ``forward``, and the quantizer itself sums their statistics across
ranks and shares rank 0's restarts, so every rank keeps the same codebook without DDP's per-forward buffer broadcast
(which would also overwrite the other ranks' updates): :func:`distributed_data_parallel` turns that broadcast off.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from ..errors import SettingError
from .precision import resolve_device

#: environment variables ``torchrun`` sets for every process and ``init_process_group("env://")`` reads
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# the package's rank helpers (handlers and configs use these). Plain torch.distributed rather than ignite.distributed:
# ignite caches its view of the process group, which outlives a destroyed group and makes a later get_rank fail, and
# it warns about guessing LOCAL_RANK on every group it discovers.
def get_rank() -> int:
    """The global rank, or 0 when no process group is initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes, or 1 when no process group is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, or when not running distributed: the process that logs and writes files."""
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks in place when more than one process runs; return it.

    Args:
        tensor: a tensor on this rank's device.
    """
    if get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def distributed_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device of this process: ``cuda:<LOCAL_RANK>`` for ``"auto"`` (with a GPU) or ``"cuda"``, else CPU.

    Args:
        device: ``"auto"`` (or None): a GPU per process when CUDA is available, else CPU; ``"cuda"``: a GPU per
            process (an error without CUDA); ``"cpu"``: every process on the CPU (gloo backend). An explicit
            ``"cuda:<index>"`` is refused: every process would use the same GPU.

    Raises:
        ValueError: for a device that cannot be used here.
    """
    name = "auto" if device is None else str(device)
    if name not in ("auto", "cuda", "cpu"):
        raise ValueError(
            f"multi-process training needs device 'auto', 'cuda' or 'cpu', got '{device}': each process picks "
            "its GPU from LOCAL_RANK (restrict the GPUs with CUDA_VISIBLE_DEVICES)."
        )
    if resolve_device(name).type == "cpu":
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))  # this process's index on its node (0 without torchrun)
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {index} has no GPU: only {torch.cuda.device_count()} visible; start at most that many "
            "processes per node (torchrun --nproc_per_node)."
        )
    return torch.device("cuda", index)


def distributed_data_parallel(
    module: torch.nn.Module, device_ids: list[Any] | None = None, **kwargs: Any
) -> torch.nn.parallel.DistributedDataParallel:
    """Torch's ``DistributedDataParallel`` around ``module``, without its buffer broadcast at every forward.

    torch 2.13 deprecates ``broadcast_buffers`` (a ``FutureWarning`` on every rank) for ``forward_sync_buffers``;
    this passes whichever the installed torch takes. The buffers are still made equal on every rank when the wrapper
    is built (``forward_sync_buffers=False`` keeps that initial sync), which the ranks' identical codebooks need.

    Args:
        module: the network.
        device_ids: the one CUDA device of this rank, or None on the CPU.
        kwargs: further ``DistributedDataParallel`` arguments.
    """
    import inspect

    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **no_sync, **kwargs)


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(
    device: torch.device | str = "cpu", backend: str | None = None, timeout_minutes: float | None = None
) -> bool:
    """Join the process group described by ``torchrun``'s environment variables (``env://``).

    Does nothing when a group is already initialised, so a bundle's ``initialize`` may run twice in one process.

    Args:
        device: this process's device (see :func:`distributed_device`); a CUDA device is made the current one.
        backend: the ``torch.distributed`` backend; by default NCCL for CUDA devices and gloo for the CPU.
        timeout_minutes: how long collectives wait for the other ranks; None keeps torch's default. Raise it
            when rank 0 alone does long work between collectives.

    Returns:
        True when this call initialised the group, False when one was already there.

    Raises:
        RuntimeError: when ``torch.distributed`` is unavailable.
        SettingError: when the process was not started by ``torchrun`` (the multi-process configs were run alone).
    """
    if not dist.is_available():
        raise RuntimeError("this build of torch has no torch.distributed; multi-process training is not possible.")
    if dist.is_initialized():
        return False
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        # a usage problem of the command line, not a fault: one line and exit status 2
        raise SettingError(
            f"multi-process training must be launched by torchrun (missing environment variables {missing}), e.g. "
            "torchrun --standalone --nproc_per_node=2 -m monai.bundle run training "
            "--config_file \"['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']\""
        )
    device = torch.device(device)
    if device.type == "cuda":
        # NCCL binds each rank to the current device: set it before the group is created
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"backend": backend or backend_for(device), "init_method": "env://"}
    if timeout_minutes is not None:
        kwargs["timeout"] = datetime.timedelta(minutes=timeout_minutes)
    dist.init_process_group(**kwargs)
    return True


def quiet_non_main_logging(
    loggers: tuple[str, ...] = ("ignite", "monai_vqbrain"), level: int = logging.WARNING
) -> None:
    """On ranks other than 0, show only warnings and errors of ``loggers``, so progress is reported once.

    Call it after :func:`init_distributed`. Rank 0's logging and every rank's warnings are left as they are.

    Args:
        loggers: names of the loggers to quieten (children included).
        level: the lowest level still shown on the other ranks.
    """
    if is_main_process():
        return
    for name in loggers:
        logging.getLogger(name).setLevel(level)


def main_process_first_begin() -> None:
    """Start of a step rank 0 does first (e.g. writing a cache the other ranks then read): the others wait here.

    Put the step between this and :func:`main_process_first_end`; every rank must call both, in this order. In a
    bundle these are separate ``initialize`` expressions around one that references the cached item::

        "$monai_vqbrain.engines.distributed.main_process_first_begin()",
        "$@prior_codes#train",
        "$monai_vqbrain.engines.distributed.main_process_first_end()"
    """
    if get_world_size() > 1 and not is_main_process():
        dist.barrier()


def main_process_first_end() -> None:
    """End of a step rank 0 does first: rank 0, done, releases the ranks waiting in :func:`main_process_first_begin`."""
    if get_world_size() > 1 and is_main_process():
        dist.barrier()


def destroy_distributed() -> None:
    """Leave the process group, after the other ranks are done (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        # a barrier first, so no rank tears the group down while another is still in a collective
        dist.barrier()
        dist.destroy_process_group()
