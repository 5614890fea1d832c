"""VQVAELoss: components sum to the total, options and errors."""

from __future__ import annotations

import pytest
import torch

from monai_vqbrain.losses import VQVAELoss


@pytest.mark.parametrize(("reconstruction", "ssim_weight"), [("l1", 0.0), ("mse", 0.0), ("l1", 0.5)])
def test_components_sum_to_total(reconstruction, ssim_weight):
    loss = VQVAELoss(reconstruction=reconstruction, ssim_weight=ssim_weight)
    prediction, target = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    losses = loss(prediction, target, torch.tensor(0.3), torch.tensor(0.2))
    assert set(losses) == {"total", "reconstruction", "vq", "codebook", "commitment"}
    torch.testing.assert_close(losses["vq"], losses["codebook"] + losses["commitment"])
    torch.testing.assert_close(losses["total"], losses["reconstruction"] + losses["vq"])
    pixel = (prediction - target).abs().mean() if reconstruction == "l1" else ((prediction - target) ** 2).mean()
    if ssim_weight == 0:
        torch.testing.assert_close(losses["reconstruction"], pixel)
    else:
        assert losses["reconstruction"] > pixel


def test_perfect_reconstruction_has_zero_reconstruction_loss():
    loss = VQVAELoss(ssim_weight=1.0)
    image = torch.rand(1, 1, 32, 32)
    losses = loss(image, image, torch.tensor(0.0), torch.tensor(0.0))
    assert losses["total"].item() == pytest.approx(0.0, abs=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="reconstruction"):
        VQVAELoss(reconstruction="huber")
    with pytest.raises(ValueError, match="differ"):
        VQVAELoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 4, 4), torch.tensor(0.0), torch.tensor(0.0))


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 2, 40, 24), (1, 1, 16, 16, 16)])
def test_separable_ssim_equals_monai_ssim(shape):
    from monai.losses import SSIMLoss
    from monai.metrics import SSIMMetric

    from monai_vqbrain.losses import structural_similarity

    torch.manual_seed(0)
    target = torch.rand(shape)
    prediction = (target + 0.1 * torch.randn(shape)).clamp(0, 1)
    spatial_dims = len(shape) - 2
    ours = structural_similarity(prediction, target)
    monai_per_image = SSIMMetric(spatial_dims=spatial_dims, data_range=1.0)(prediction, target).reshape(-1)
    torch.testing.assert_close(ours.mean(dim=1), monai_per_image, atol=1e-5, rtol=0)
    loss = VQVAELoss(ssim_weight=1.0, spatial_dims=spatial_dims)(prediction, target, torch.tensor(0.0), torch.tensor(0.0))
    expected = (prediction - target).abs().mean() + SSIMLoss(spatial_dims=spatial_dims, data_range=1.0)(prediction, target)
    torch.testing.assert_close(loss["reconstruction"], expected, atol=1e-5, rtol=0)
