"""VQ-VAE shapes, gradients and API for 2D and 3D, and the reconstruction wrapper."""

from __future__ import annotations

import pytest
import torch

from monai_vqbrain.networks import VQVAE, VQVAEOutput


def small_vqvae(spatial_dims: int = 2, **kwargs) -> VQVAE:
    settings = dict(channels=(8, 16), num_res_layers=1, num_embeddings=16, embedding_dim=4)
    settings.update(kwargs)
    return VQVAE(spatial_dims=spatial_dims, in_channels=1, out_channels=1, **settings)


@pytest.mark.parametrize(("spatial_dims", "shape"), [(2, (2, 1, 32, 32)), (3, (1, 1, 16, 16, 16))])
def test_shapes(spatial_dims, shape):
    network = small_vqvae(spatial_dims)
    images = torch.rand(shape)
    reconstruction, quantization_loss = network(images)
    assert reconstruction.shape == images.shape
    assert quantization_loss.ndim == 0
    latents = network.encode(images)
    latent_spatial = tuple(s // 4 for s in shape[2:])
    assert latents.shape == (shape[0], 4, *latent_spatial)
    indices = network.index_quantize(images)
    assert indices.shape == (shape[0], *latent_spatial) and indices.dtype == torch.long
    assert network.decode_samples(indices).shape == images.shape


def test_three_levels_and_channels():
    network = VQVAE(spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 8, 16), num_embeddings=8, embedding_dim=4)
    images = torch.rand(1, 3, 32, 32)
    details = network(images, return_details=True)
    assert isinstance(details, VQVAEOutput)
    assert details.reconstruction.shape == (1, 2, 32, 32)
    assert details.indices.shape == (1, 4, 4)
    assert torch.allclose(details.quantization_loss, details.codebook_loss + details.commitment_loss)


def test_gradients_reach_encoder_through_straight_through_estimator():
    network = small_vqvae()
    images = torch.rand(2, 1, 32, 32)
    reconstruction, quantization_loss = network(images)
    (torch.nn.functional.mse_loss(reconstruction, images) + quantization_loss).backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    # the encoder's gradient comes through the quantizer: without straight-through it would be only commitment
    encoder_grad = sum(p.grad.abs().sum() for p in network.encoder.parameters())
    assert encoder_grad > 0


def test_gradient_codebook_without_ema():
    network = small_vqvae(decay=None)
    images = torch.rand(2, 1, 32, 32)
    details = network(images, return_details=True)
    assert details.codebook_loss > 0
    (details.reconstruction.mean() + details.quantization_loss).backward()
    assert network.quantizer.embedding.grad is not None


def test_bad_inputs_are_clear():
    network = small_vqvae()
    with pytest.raises(ValueError, match="divisible by 4"):
        network(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="expected images of shape"):
        network(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        VQVAE(spatial_dims=1)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        network.decode_samples(torch.full((1, 8, 8), 16))


def test_the_reconstruction_forward_is_reconstruct_and_updates_no_codebook():
    # the one-tensor forward MONAI's tools and inference call: the codes' reconstruction, in training mode too
    network = small_vqvae(forward_output="reconstruction").train()
    tuple_network = small_vqvae().eval()
    tuple_network.load_state_dict(network.state_dict())
    images = torch.rand(2, 1, 32, 32)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        reconstruction = network(images)
        expected, _ = tuple_network(images)
    torch.testing.assert_close(reconstruction, expected)
    torch.testing.assert_close(reconstruction, network.reconstruct(images))
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items()), "no codebook update"


def test_bf16_autocast_keeps_codebook_in_float32():
    torch.manual_seed(0)
    network = small_vqvae().train()
    images = torch.rand(4, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        details = network(images, return_details=True)
    assert network.quantizer.embedding.dtype == torch.float32
    assert details.commitment_loss.dtype == torch.float32
    # the codes chosen under autocast equal those chosen in float32 from the same (bf16-rounded) latents
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents = network.encode(images)
    assert torch.equal(network.quantizer.quantize(latents), network.quantizer.quantize(latents.float()))
