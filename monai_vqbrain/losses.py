"""The VQ-VAE training objective, returned as its total and each of its components."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RECONSTRUCTION_LOSSES = ("mse", "l1")


def structural_similarity(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM of each image of a batch of 2D or 3D images, equal to MONAI's ``SSIMMetric`` (Gaussian kernel).

    The Gaussian window is applied as one 1D convolution per axis instead of one N-D convolution: the same result
    with ``2 * window_size`` instead of ``window_size ** 2`` taps, which makes SSIM cheap enough to train with on
    CPU. Computed in float32 (SSIM subtracts nearly equal moments, which bf16 cannot resolve).

    Args:
        prediction: images ``(B, C, *spatial)``.
        target: images of the same shape.
        data_range: intensity range of the images.
        window_size: width of the Gaussian window.
        sigma: standard deviation of the Gaussian window.
        k1: luminance stability constant.
        k2: contrast stability constant.

    Returns:
        SSIM per image and channel, ``(B, C)``.
    """
    prediction, target = prediction.float(), target.float()
    channels, spatial_dims = prediction.shape[1], prediction.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"expected 2D or 3D images (B, C, *spatial), got shape {tuple(prediction.shape)}.")
    # the five local moments for every channel, filtered together as 5 * C groups
    moments = torch.cat([prediction, target, prediction * prediction, target * target, prediction * target], dim=1)
    offsets = torch.arange(window_size, device=prediction.device, dtype=torch.float32) - (window_size - 1) / 2
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    window = window / window.sum()
    convolution = F.conv2d if spatial_dims == 2 else F.conv3d
    for axis in range(spatial_dims):
        shape = [1] * spatial_dims
        shape[axis] = window_size
        moments = convolution(moments, window.view(1, 1, *shape).expand(5 * channels, 1, *shape), groups=5 * channels)
    mean_p, mean_t, mean_pp, mean_tt, mean_pt = moments.chunk(5, dim=1)
    variance_p = mean_pp - mean_p * mean_p
    variance_t = mean_tt - mean_t * mean_t
    covariance = mean_pt - mean_p * mean_t
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mean_p * mean_t + c1) * (2 * covariance + c2)) / (
        (mean_p * mean_p + mean_t * mean_t + c1) * (variance_p + variance_t + c2)
    )
    return ssim_map.flatten(2).mean(dim=2)


class VQVAELoss(nn.Module):
    """``total = reconstruction + vq`` with ``vq = codebook + commitment``.

    The reconstruction term is a pixel loss, optionally plus ``ssim_weight * (1 - SSIM)``: the SSIM term
    optimises the structure the evaluation measures directly, and sharpens edges an L1/L2 loss blurs.

    Args:
        reconstruction: pixel loss, ``"mse"`` or ``"l1"``.
        ssim_weight: weight of the ``1 - SSIM`` term; 0 disables it.
        spatial_dims: spatial dimensions of the images, 2 or 3.
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
        self.spatial_dims = spatial_dims
        self.data_range = data_range

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
        reconstruction, target = reconstruction.float(), target.float()
        pixel_loss = F.mse_loss if self.reconstruction == "mse" else F.l1_loss
        reconstruction_loss = pixel_loss(reconstruction, target)
        if self.ssim_weight > 0:
            ssim = structural_similarity(reconstruction, target, data_range=self.data_range).mean()
            reconstruction_loss = reconstruction_loss + self.ssim_weight * (1.0 - ssim)
        vq_loss = codebook_loss + commitment_loss
        return {
            "total": reconstruction_loss + vq_loss,
            "reconstruction": reconstruction_loss,
            "vq": vq_loss,
            "codebook": codebook_loss,
            "commitment": commitment_loss,
        }
