"""The VQ-VAE training objective, returned as its total and each of its components."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from torch import nn

RECONSTRUCTION_LOSSES = ("mse", "l1")


class VQVAELoss(nn.Module):
    """``total = reconstruction + vq`` with ``vq = codebook + commitment``.

    The reconstruction term is a pixel loss, optionally plus ``ssim_weight * (1 - SSIM)``: the SSIM term
    optimises the structure the evaluation measures directly, and sharpens edges an L1/L2 loss blurs.

    Args:
        reconstruction: pixel loss, ``"mse"`` or ``"l1"``.
        ssim_weight: weight of the ``1 - SSIM`` term; 0 disables it.
        spatial_dims: spatial dimensions of the images (for the SSIM window).
        data_range: intensity range of the images (for SSIM).
    """

    def __init__(
        self, reconstruction: str = "l1", ssim_weight: float = 0.0, spatial_dims: int = 2, data_range: float = 1.0
    ) -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTION_LOSSES}, got {reconstruction!r}.")
        if ssim_weight < 0:
            raise ValueError(f"ssim_weight must be >= 0, got {ssim_weight}.")
        self.reconstruction = reconstruction
        self.ssim_weight = ssim_weight
        self.ssim_loss = SSIMLoss(spatial_dims=spatial_dims, data_range=data_range) if ssim_weight > 0 else None

    def forward(
        self,
        reconstruction: torch.Tensor,
        target: torch.Tensor,
        codebook_loss: torch.Tensor,
        commitment_loss: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Return a dict with ``total``, ``reconstruction``, ``vq``, ``codebook`` and ``commitment``."""
        if reconstruction.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ.")
        # pixel losses in float32: bf16 rounding of small residuals would stall training near convergence
        reconstruction = reconstruction.float()
        target = target.float()
        pixel_loss = F.mse_loss if self.reconstruction == "mse" else F.l1_loss
        reconstruction_loss = pixel_loss(reconstruction, target)
        if self.ssim_loss is not None:
            reconstruction_loss = reconstruction_loss + self.ssim_weight * self.ssim_loss(reconstruction, target)
        vq_loss = codebook_loss + commitment_loss
        return {
            "total": reconstruction_loss + vq_loss,
            "reconstruction": reconstruction_loss,
            "vq": vq_loss,
            "codebook": codebook_loss,
            "commitment": commitment_loss,
        }
