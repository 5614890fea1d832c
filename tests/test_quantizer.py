"""The vector quantizer: nearest codes, EMA updates, dead-code restart, initialisation, usage statistics."""

from __future__ import annotations

import pytest
import torch

from monai_vqbrain.networks import VectorQuantizer, code_usage_statistics


def test_nearest_code_and_straight_through():
    quantizer = VectorQuantizer(num_embeddings=3, embedding_dim=2, codebook_init="random").eval()
    quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]]))
    latents = torch.tensor([[0.9, 1.2], [0.1, -0.1], [-0.8, 1.7]]).t().reshape(1, 2, 3, 1).requires_grad_()
    output = quantizer(latents)
    assert output.indices.flatten().tolist() == [1, 0, 2]
    torch.testing.assert_close(output.quantized.detach().reshape(2, 3).t(), quantizer.embedding[[1, 0, 2]])
    output.quantized.sum().backward()
    torch.testing.assert_close(latents.grad, torch.ones_like(latents))  # straight-through: identity gradient


def test_ema_update_moves_code_to_cluster_mean():
    quantizer = VectorQuantizer(num_embeddings=2, embedding_dim=2, decay=0.5, epsilon=0.0, dead_code_threshold=0.0,
                                codebook_init="random").train()
    quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    quantizer.ema_embedding_sum.copy_(quantizer.embedding)
    quantizer.ema_cluster_size.fill_(1.0)
    # four vectors near code 0 with mean (1, 2); none near code 1
    vectors = torch.tensor([[1.0, 2.0], [1.5, 2.5], [0.5, 1.5], [1.0, 2.0]])
    quantizer(vectors.t().reshape(1, 2, 4, 1))
    # EMA: size 0.5*1 + 0.5*4 = 2.5; sum 0.5*0 + 0.5*(4, 8) = (2, 4); code 0 -> sum/size = (0.8, 1.6)
    torch.testing.assert_close(quantizer.ema_cluster_size, torch.tensor([2.5, 0.5]))
    torch.testing.assert_close(quantizer.embedding[0], torch.tensor([0.8, 1.6]))
    torch.testing.assert_close(quantizer.embedding[1], torch.tensor([10.0, 10.0]))
    # repeated updates converge to the cluster mean
    for _ in range(30):
        quantizer(vectors.t().reshape(1, 2, 4, 1))
    torch.testing.assert_close(quantizer.embedding[0], torch.tensor([1.0, 2.0]), atol=1e-3, rtol=0)


def test_dead_codes_restart_to_encoder_outputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_embeddings=8, embedding_dim=3, decay=0.9, dead_code_threshold=0.5,
                                codebook_init="random").train()
    # every code far from the data except code 0: all vectors go to code 0, the rest die
    quantizer.embedding.copy_(torch.full((8, 3), 100.0))
    quantizer.embedding[0] = 0.0
    quantizer.ema_embedding_sum.copy_(quantizer.embedding)
    data = torch.randn(1, 3, 16, 16)
    for _ in range(10):
        quantizer(data)
    assert int(quantizer.restarted_codes) >= 7
    flat = data.movedim(1, -1).reshape(-1, 3)
    # restarted codes now sit at (or EMA-near) real encoder outputs, and the codebook is in use again
    distances = torch.cdist(quantizer.embedding, flat).min(dim=1).values
    assert (distances < 2.0).all()
    output = quantizer(data)
    assert output.codebook_usage > 0.5


def test_no_restart_when_disabled():
    quantizer = VectorQuantizer(num_embeddings=4, embedding_dim=2, dead_code_threshold=0.0, codebook_init="random")
    quantizer.embedding.copy_(torch.full((4, 2), 100.0))
    quantizer.ema_embedding_sum.copy_(quantizer.embedding)
    for _ in range(5):
        quantizer(torch.randn(1, 2, 4, 4))
    assert int(quantizer.restarted_codes) == 0


@pytest.mark.parametrize("init", ["kmeans", "data"])
def test_data_initialisation_runs_once_on_first_training_batch(init):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_embeddings=4, embedding_dim=2, codebook_init=init, dead_code_threshold=0.0)
    centers = torch.tensor([[-5.0, -5.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    data = (centers[torch.arange(256) % 4] + 0.1 * torch.randn(256, 2)).t().reshape(1, 2, 16, 16)
    assert not bool(quantizer.initialized)
    quantizer.eval()(data)
    assert not bool(quantizer.initialized), "initialisation must wait for training"
    output = quantizer.train()(data)
    assert bool(quantizer.initialized)
    if init == "kmeans":
        found = torch.cdist(centers, quantizer.embedding).min(dim=1).values
        assert (found < 0.5).all(), "k-means should place one code on each cluster"
        assert output.codebook_usage == 1.0
    state = quantizer.state_dict()
    restored = VectorQuantizer(num_embeddings=4, embedding_dim=2, codebook_init=init, dead_code_threshold=0.0)
    restored.load_state_dict(state)
    restored.train()(data)
    quantizer(data)
    # a restored quantizer does not initialise again: it takes exactly the EMA step the original takes
    torch.testing.assert_close(restored.embedding, quantizer.embedding)


def test_usage_statistics():
    perplexity, usage = code_usage_statistics(torch.tensor([5, 5, 5, 5, 0, 0, 0, 0]))
    assert perplexity.item() == pytest.approx(4.0)
    assert usage.item() == pytest.approx(0.5)
    perplexity, usage = code_usage_statistics(torch.tensor([10, 0, 0]))
    assert perplexity.item() == pytest.approx(1.0)


def test_losses_and_usage_reported():
    quantizer = VectorQuantizer(num_embeddings=16, embedding_dim=4, commitment_cost=0.25).train()
    output = quantizer(torch.randn(2, 4, 8, 8))
    assert output.codebook_loss.item() == 0.0  # EMA learns the codebook: no codebook loss
    assert output.commitment_loss.item() > 0
    assert 1.0 <= output.perplexity.item() <= 16.0
    assert 0.0 < output.codebook_usage.item() <= 1.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(decay=1.5)
    with pytest.raises(ValueError, match="codebook_init"):
        VectorQuantizer(codebook_init="magic")
    with pytest.raises(ValueError, match="expected latents"):
        VectorQuantizer(embedding_dim=4)(torch.randn(1, 3, 2, 2))


def _line_codebook(quantizer: VectorQuantizer) -> None:
    """Codes 0..K-1 on a line, so that each code's nearest neighbours are the codes next to it."""
    positions = torch.arange(quantizer.num_embeddings, dtype=torch.float32)
    with torch.no_grad():
        quantizer.embedding.copy_(torch.stack([positions, torch.zeros_like(positions)], dim=1))


def test_code_noise_decodes_near_neighbours_but_reports_the_nearest_code():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_embeddings=8, embedding_dim=2, decay=None, codebook_init="random",
                                code_noise=0.5, code_noise_neighbours=2).train()
    _line_codebook(quantizer)
    codes = torch.randint(1, 7, (4, 16, 16))
    latents = quantizer.embedding.detach()[codes].movedim(-1, 1).clone().requires_grad_()
    output = quantizer(latents)
    # the indices, the commitment and the codebook losses are the encoder's own nearest codes
    assert torch.equal(output.indices, codes)
    assert float(output.commitment_loss.detach()) == 0.0 and float(output.codebook_loss.detach()) == 0.0
    # about half the positions are decoded through a code one step away (the two nearest), never further
    decoded = output.quantized.detach()[:, 0]
    moved = decoded != codes.float()
    assert 0.4 < float(moved.float().mean()) < 0.6
    assert torch.equal((decoded - codes.float()).abs()[moved], torch.ones(int(moved.sum())))
    output.quantized.sum().backward()
    torch.testing.assert_close(latents.grad, torch.ones_like(latents))  # still straight-through


def test_code_noise_is_off_in_eval_mode_and_when_zero():
    quantizer = VectorQuantizer(num_embeddings=8, embedding_dim=2, codebook_init="random", code_noise=1.0).eval()
    _line_codebook(quantizer)
    codes = torch.randint(0, 8, (2, 8, 8))
    latents = quantizer.embedding.detach()[codes].movedim(-1, 1)
    torch.testing.assert_close(quantizer(latents).quantized, latents)
    quiet = VectorQuantizer(num_embeddings=8, embedding_dim=2, decay=None, codebook_init="random").train()
    _line_codebook(quiet)
    torch.testing.assert_close(quiet(latents).quantized, latents)


@pytest.mark.parametrize("kwargs", [{"code_noise": -0.1}, {"code_noise": 1.5}, {"code_noise_neighbours": 0},
                                    {"code_noise_neighbours": 2.5}])
def test_code_noise_arguments_are_checked(kwargs):
    with pytest.raises(ValueError, match="code_noise"):
        VectorQuantizer(num_embeddings=8, embedding_dim=2, **kwargs)
