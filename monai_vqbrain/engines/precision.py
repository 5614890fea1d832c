"""Device and precision choices shared by the trainers, evaluators, inference and generation.

Mixed precision pays only where the hardware runs it natively: bf16 autocast is ~1.4x faster than fp32 on a CPU with
AVX-512 bf16 or AMX, but on a CPU without them (AVX2 only: most laptops and many cloud machines) PyTorch emulates
bf16 and the same step runs ~9x *slower* than fp32. ``amp="auto"`` therefore resolves per device.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ..utils.flags import as_bool

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA when present, else CPU; anything else is passed to ``torch.device``.

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but CUDA is not available; use 'cpu' or 'auto'.")
    return resolved


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 bf16 / AMX.

    On the CPU this asks oneDNN, which also honours ``ONEDNN_MAX_CPU_ISA`` (so a capped dispatch reads as the
    lesser CPU it emulates).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision dtype on ``device``: bf16 on CPU and on CUDA GPUs that support it, else fp16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def parse_amp(amp: bool | str | None, name: str = "amp") -> bool | str:
    """An ``amp`` setting as ``"auto"``, True or False (command-line strings in any case).

    Raises:
        ValueError: naming the setting when ``amp`` is none of these.
    """
    if isinstance(amp, str) and amp.strip().lower() == "auto":
        return "auto"
    try:
        return as_bool(amp, name)
    except ValueError:
        raise ValueError(f"{name} must be auto, true or false, got {amp!r}.") from None


def resolve_amp(amp: bool | str | None, device: torch.device | str, name: str = "amp", log: bool = False) -> bool:
    """Whether to run under mixed precision on ``device``.

    ``"auto"`` picks the fastest precision that is native there: on a CUDA GPU always mixed precision (bf16 where
    supported, else fp16 with loss scaling); on a CPU bf16 only where :func:`native_bf16` says the CPU runs it
    natively, else fp32. ``True`` forces mixed precision and ``False`` disables it.

    Args:
        amp: ``"auto"``, a boolean, or a command-line string (``"true"``, ``"false"``, ``"auto"``...).
        device: the device the computation runs on.
        name: the setting's name, for the error message and the log.
        log: log (at INFO) which precision was chosen and why; the bundle configs do this once per run.

    Raises:
        ValueError: naming the setting when ``amp`` is none of these.
    """
    setting = parse_amp(amp, name)
    device = torch.device(device)
    enabled = setting if isinstance(setting, bool) else device.type == "cuda" or native_bf16(device)
    if log:
        logger.info(describe_precision(setting, device, enabled, name))
    return enabled


def precision_name(device: torch.device, enabled: bool) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: what :func:`autocast` computes in on ``device``."""
    device = torch.device(device)
    if not enabled or device.type not in ("cpu", "cuda"):
        return "fp32"
    return "fp16" if autocast_dtype(device) == torch.float16 else "bf16"


def describe_precision(setting: bool | str, device: torch.device, enabled: bool, name: str = "amp") -> str:
    """One log line: the precision chosen on ``device`` and why, e.g. ``precision: fp32 (this CPU has no ...)``."""
    precision = precision_name(device, enabled)
    if device.type == "cpu":
        native = native_bf16(device)
        capability = torch.backends.cpu.get_cpu_capability()
        if enabled and not native:
            why = f"forced by {name}=true although this CPU ({capability}) has no native bf16: expect ~9x slower than fp32"
        elif enabled:
            why = f"this CPU ({capability}) runs bf16 natively" + (f"; {name}=auto" if setting == "auto" else "")
        elif setting == "auto":
            why = f"this CPU ({capability}) has no native bf16; bf16 would be ~9x slower"
        else:
            why = f"{name}=false" + ("; this CPU runs bf16 natively, amp=auto would be faster" if native else "")
    elif device.type == "cuda":
        why = f"{name}={str(setting).lower()} on {torch.cuda.get_device_name(device)}"
        if precision == "fp16":
            why += " (no bf16 support: fp16 with loss scaling)"
    else:
        why = f"no mixed precision on {device.type}"
    return f"precision: {precision} on {device} ({why})"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """An autocast context for ``device`` (a no-op when not ``enabled`` or on devices without autocast)."""
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=autocast_dtype(device))


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none."""
    return enabled and device.type == "cuda" and autocast_dtype(device) == torch.float16
