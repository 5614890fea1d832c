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
