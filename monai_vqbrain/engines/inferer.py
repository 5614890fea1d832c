"""Inferers that reconstruct images through a VQ-VAE's codes, under mixed precision when asked."""

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


class SliceCodesInferer(Inferer):
    """Encode and decode the slices of each input, held as the channels of a 2D image, ``batch_size`` slices a call.

    ``inputs`` is ``(B, N, S, S)``: ``N`` model-size slices of each of ``B`` files (one slice for a PNG, every slice
    of a volume along ``slice_axis``). Each slice goes through ``vqvae.index_quantize`` and the reconstruction is
    decoded from those codes (so a saved code map decodes to exactly it). Not MONAI's ``SliceInferer``: that cuts
    spatial slices of 3D inputs and returns only the network's output, while here a volume is already cut into
    display-oriented slices by the preprocessing and the code maps are an output too.

    Args:
        batch_size: slices per network call.
        amp: run under autocast (bf16/fp16): True, False, or ``"auto"`` for mixed precision only where the inputs'
            device runs it natively.
    """

    def __init__(self, batch_size: int = 32, amp: bool | str = False) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.amp = parse_amp(amp)

    def __call__(
        self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the reconstructions ``(B, N, S, S)`` (clamped to [0, 1]) and code maps ``(B, N, h, w)`` of ``inputs``."""
        vqvae = unwrap_network(network)
        amp = resolve_amp(self.amp, inputs.device)
        images = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        batch, count = images.shape[:2]
        slices = images.flatten(0, 1).unsqueeze(1).float()
        codes, decoded = [], []
        for start in range(0, slices.shape[0], self.batch_size):
            with autocast(inputs.device, amp):
                chunk_codes = vqvae.index_quantize(slices[start : start + self.batch_size])
                chunk_images = vqvae.decode_samples(chunk_codes)
            codes.append(chunk_codes)
            decoded.append(chunk_images.float().clamp(0.0, 1.0))
        reconstruction = torch.cat(decoded)[:, 0].unflatten(0, (batch, count))
        return reconstruction, torch.cat(codes).unflatten(0, (batch, count))
