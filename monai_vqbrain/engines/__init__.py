"""Ignite/MONAI engines: the VQ-VAE trainer, the reconstruction inferers, batch preparation and precision."""

from .adversarial import ADVERSARIAL_COMPONENTS, PatchAdversarialTerm
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
    "ADVERSARIAL_COMPONENTS",
    "LOSS_COMPONENTS",
    "AutoencoderPrepareBatch",
    "MixedPrecisionTrainer",
    "PatchAdversarialTerm",
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
