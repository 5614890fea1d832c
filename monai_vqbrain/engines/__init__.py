"""Ignite/MONAI engines: the VQ-VAE trainer, the reconstruction inferers, batch preparation and precision."""

from .inferer import ReconstructionInferer, SliceCodesInferer
from .precision import (
    autocast,
    autocast_dtype,
    describe_precision,
    native_bf16,
    needs_grad_scaler,
    parse_amp,
    precision_name,
    resolve_amp,
    resolve_device,
)
from .prepare_batch import AutoencoderPrepareBatch
from .trainer import LOSS_COMPONENTS, MixedPrecisionTrainer, VQVAETrainer

__all__ = [
    "LOSS_COMPONENTS",
    "AutoencoderPrepareBatch",
    "MixedPrecisionTrainer",
    "ReconstructionInferer",
    "SliceCodesInferer",
    "VQVAETrainer",
    "autocast",
    "autocast_dtype",
    "describe_precision",
    "native_bf16",
    "needs_grad_scaler",
    "parse_amp",
    "precision_name",
    "resolve_amp",
    "resolve_device",
]
