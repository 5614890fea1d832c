"""Inferer that reconstructs images through a VQ-VAE's codes, under mixed precision when asked."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from ..utils.modules import unwrap_network
from .precision import autocast, parse_amp, resolve_amp


class ReconstructionInferer(Inferer):
    """Reconstruct ``inputs`` with ``network.reconstruct`` (or the network's first output), clamped to a range.

    Args:
        amp: run under autocast (bf16 on CPU; bf16/fp16 on CUDA): True, False, or ``"auto"`` for mixed precision
            only where the inputs' device runs it natively (see :func:`~monai_vqbrain.engines.resolve_amp`).
        clamp: ``(low, high)`` range of the output intensities, or None to leave them unclamped.
    """

    def __init__(self, amp: bool | str = False, clamp: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        self.amp = parse_amp(amp)  # resolved per call: the device is known only then
        self.clamp = clamp

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        model = unwrap_network(network)
        with autocast(inputs.device, resolve_amp(self.amp, inputs.device)):
            if hasattr(model, "reconstruct"):
                reconstruction = model.reconstruct(inputs)
            else:
                output = model(inputs, *args, **kwargs)
                reconstruction = output[0] if isinstance(output, (tuple, list)) else output
        reconstruction = reconstruction.float()
        if self.clamp is not None:
            reconstruction = reconstruction.clamp(*self.clamp)
        return reconstruction
