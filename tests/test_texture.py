"""The texture two-sample test: histograms of intensity, gradient and local binary patterns inside the brain."""

from __future__ import annotations

import pytest
import torch

from monai_vqbrain.prior import TEXTURE_FEATURES, texture_features, texture_two_sample_test


def _brains(count: int, noise: float, seed: int) -> torch.Tensor:
    """Ellipses of smooth 'tissue' with a little per-image contrast, plus pixel noise of ``noise`` inside them."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    inside = (xs**2 / 0.5 + ys**2 / 0.7) < 1
    base = inside * (0.5 + 0.3 * torch.exp(-(xs**2 + ys**2) * 3))
    images = base[None, None] * (1 + 0.1 * torch.rand(count, 1, 1, 1, generator=generator))
    return (images + noise * torch.randn(images.shape, generator=generator) * inside).clamp(0, 1)


def test_features_are_histograms_inside_the_brain():
    images = _brains(3, 0.03, seed=0)
    features = texture_features(images)
    assert features.shape == (3, TEXTURE_FEATURES)
    # four histograms, each summing to one
    assert torch.allclose(features.sum(dim=1), torch.full((3,), 4.0), atol=1e-5)
    # the background does not count: a brain on a larger black canvas has the same statistics
    padded = torch.nn.functional.pad(images, (8, 8, 8, 8))
    torch.testing.assert_close(texture_features(padded), features)
    # a blank image is described over all its pixels rather than failing
    assert torch.isfinite(texture_features(torch.zeros(1, 1, 32, 32))).all()


def test_a_smooth_set_is_told_apart_and_a_second_real_set_is_not():
    real, second_real, smooth = _brains(40, 0.04, seed=1), _brains(40, 0.04, seed=2), _brains(40, 0.0, seed=3)
    same = texture_two_sample_test(second_real, real, folds=4)
    different = texture_two_sample_test(smooth, real, folds=4)
    assert different["auc"] > 0.95 and different["dprime"] > 2.0
    assert same["auc"] < 0.75
    assert same["num_first"] == 40 and same["features"] == TEXTURE_FEATURES
    # seeded: the same call gives the same result
    assert texture_two_sample_test(smooth, real, folds=4)["auc_folds"] == different["auc_folds"]


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match="one-channel images"):
        texture_features(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="one size"):
        texture_two_sample_test(torch.zeros(8, 1, 32, 32), torch.zeros(8, 1, 16, 16))
    with pytest.raises(ValueError, match="fewer than the 5 folds|too few"):
        texture_two_sample_test(_brains(3, 0.0, 0), _brains(3, 0.0, 1))
