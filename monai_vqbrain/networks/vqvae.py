"""VQ-VAE (van den Oord et al. 2017) for 2D or 3D images, built from the blocks in :mod:`.blocks`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.layers.factories import Conv
from monai.networks.utils import eval_mode
from torch import nn

from .blocks import Downsample, ResidualStack, Upsample, check_spatial_dims
from .quantizer import QuantizerOutput, VectorQuantizer


class VQVAEOutput(NamedTuple):
    """Everything one VQ-VAE pass produces; :meth:`VQVAE.forward` returns only the first two.

    Attributes:
        reconstruction: the decoded image, shaped like the input.
        quantization_loss: ``codebook_loss + commitment_loss``.
        codebook_loss: see :class:`~monai_vqbrain.networks.quantizer.QuantizerOutput`.
        commitment_loss: see :class:`~monai_vqbrain.networks.quantizer.QuantizerOutput`.
        indices: the code map ``(B, *latent_spatial)``.
        perplexity: perplexity of code usage in the batch.
        codebook_usage: fraction of the codebook used in the batch.
    """

    reconstruction: torch.Tensor
    quantization_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor
    codebook_usage: torch.Tensor


class Encoder(nn.Module):
    """One stride-2 downsampling per level, a 3x3 convolution, residual stack, projection to ``out_channels``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: image channels.
        out_channels: latent channels (the codebook's ``embedding_dim``).
        channels: channels after each downsampling; ``len(channels)`` is the number of downsamplings.
        num_res_layers: residual layers at the coarsest level.
        num_res_channels: channels inside each residual branch.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_layers: int,
        num_res_channels: int,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        pairs = zip([in_channels, *channels[:-1]], channels, strict=True)
        self.levels = nn.Sequential(*(Downsample(spatial_dims, c_in, c_out) for c_in, c_out in pairs))
        previous = channels[-1]
        self.refine = conv(previous, previous, kernel_size=3, padding=1)
        self.residual = ResidualStack(spatial_dims, previous, num_res_channels, num_res_layers)
        self.project = conv(previous, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.residual(self.refine(self.levels(x))))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: projection from the codes, residual stack, one upsampling per level.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: latent channels (the codebook's ``embedding_dim``).
        out_channels: image channels.
        channels: the encoder's channels per level (reversed here).
        num_res_layers: residual layers at the coarsest level.
        num_res_channels: channels inside each residual branch.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_layers: int,
        num_res_channels: int,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        reversed_channels = list(channels)[::-1]
        self.project = conv(in_channels, reversed_channels[0], kernel_size=3, padding=1)
        self.residual = ResidualStack(spatial_dims, reversed_channels[0], num_res_channels, num_res_layers)
        pairs = zip(reversed_channels[:-1], reversed_channels[1:], strict=True)
        levels = [Upsample(spatial_dims, c_in, c_out) for c_in, c_out in pairs]
        self.levels = nn.Sequential(*levels, Upsample(spatial_dims, reversed_channels[-1], out_channels, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(self.residual(self.project(x)))


class VQVAE(nn.Module):
    """Vector-quantised variational autoencoder with an EMA codebook that does not collapse.

    An image of spatial size ``S`` is encoded to a code map of size ``S / 2**len(channels)`` over a codebook
    of ``num_embeddings`` vectors of size ``embedding_dim``, and decoded back from the codes alone.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: image channels.
        out_channels: reconstruction channels (usually ``in_channels``).
        channels: channels after each downsampling; ``len(channels)`` is the number of downsamplings.
        num_res_layers: residual layers at the coarsest level of the encoder and of the decoder.
        num_res_channels: channels inside each residual branch; defaults to ``channels[-1] // 2``.
        num_embeddings: codebook size ``K``.
        embedding_dim: size of each codebook vector.
        commitment_cost: weight of the commitment loss.
        decay: EMA decay of the codebook; ``None`` learns the codebook by gradient instead.
        dead_code_threshold: EMA assignments per step under which a code is restarted; 0 disables restarts.
        codebook_init: ``"kmeans"``, ``"data"`` or ``"random"``; see :class:`VectorQuantizer`.
        output_act: ``"sigmoid"`` keeps the reconstruction in ``[0, 1]``; ``None`` leaves it linear.
        forward_output: what a plain ``forward(images)`` returns: ``"tuple"`` gives ``(reconstruction,
            quantization_loss)`` as MONAI's ``VQVAE`` does; ``"reconstruction"`` gives :meth:`reconstruct`'s output
            alone (no loss terms, no codebook update), the one-tensor output MONAI's bundle tools
            (``verify_net_in_out``, ``ckpt_export``, ``onnx_export``, ``monai.bundle.load``) and inference expect of
            a bundle's ``network_def``. ``forward(images, return_details=True)`` is the same for both.
        code_noise: in training, the probability that a latent vector is decoded through a near neighbour of its
            code (see :class:`VectorQuantizer`), so the decoder forgives a prior's near-misses; 0 disables it.
        code_noise_neighbours: the nearest codebook vectors a code can be replaced by under ``code_noise``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128),
        num_res_layers: int = 2,
        num_res_channels: int | None = None,
        num_embeddings: int = 512,
        embedding_dim: int = 64,
        commitment_cost: float = 0.25,
        decay: float | None = 0.99,
        dead_code_threshold: float = 1.0,
        codebook_init: str = "kmeans",
        output_act: str | None = None,
        forward_output: str = "tuple",
        code_noise: float = 0.0,
        code_noise_neighbours: int = 8,
    ) -> None:
        super().__init__()
        if forward_output not in ("tuple", "reconstruction"):
            raise ValueError(f"forward_output must be one of tuple, reconstruction, got {forward_output!r}.")
        self.forward_output = forward_output
        check_spatial_dims(spatial_dims)
        if len(channels) < 1:
            raise ValueError("channels must name at least one level (one downsampling).")
        if output_act not in (None, "sigmoid"):
            raise ValueError(f"output_act must be None or 'sigmoid', got {output_act!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(channels)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.downsample_factor = 2 ** len(self.channels)
        res_channels = num_res_channels if num_res_channels is not None else max(self.channels[-1] // 2, 1)
        self.encoder = Encoder(spatial_dims, in_channels, embedding_dim, self.channels, num_res_layers, res_channels)
        self.quantizer = VectorQuantizer(
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
            decay=decay,
            dead_code_threshold=dead_code_threshold,
            codebook_init=codebook_init,
            code_noise=code_noise,
            code_noise_neighbours=code_noise_neighbours,
        )
        self.decoder = Decoder(spatial_dims, embedding_dim, out_channels, self.channels, num_res_layers, res_channels)
        self.output_act = nn.Sigmoid() if output_act == "sigmoid" else nn.Identity()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latents ``(B, embedding_dim, *latent_spatial)`` of images ``(B, in_channels, *spatial)``."""
        if not torch.jit.is_tracing():  # a trace (ONNX export) records the example's shapes: comparing them only warns
            if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.in_channels:
                raise ValueError(
                    f"expected images of shape (B, {self.in_channels}, {', '.join(['S'] * self.spatial_dims)}), "
                    f"got {tuple(images.shape)}."
                )
            if any(size % self.downsample_factor for size in images.shape[2:]):
                raise ValueError(
                    f"every spatial size must be divisible by {self.downsample_factor} "
                    f"(2 ** number of downsamplings), got {tuple(images.shape[2:])}."
                )
        return self.encoder(images)

    def index_quantize(self, images: torch.Tensor) -> torch.Tensor:
        """Code maps ``(B, *latent_spatial)`` of images: the compressed representation."""
        return self.quantizer.quantize(self.encode(images))

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Images from quantized latents ``(B, embedding_dim, *latent_spatial)``."""
        return self.output_act(self.decoder(quantized))

    def decode_samples(self, indices: torch.Tensor) -> torch.Tensor:
        """Images from code maps ``(B, *latent_spatial)``, e.g. those sampled from a prior."""
        return self.decode(self.quantizer.embed(indices))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the codes, without loss terms or codebook updates."""
        return self.decode(self.quantizer.lookup(self.index_quantize(images)))

    def forward_with_details(self, images: torch.Tensor) -> VQVAEOutput:
        """One encode-quantize-decode pass returning every loss term and codebook statistic."""
        vq: QuantizerOutput = self.quantizer(self.encode(images))
        return VQVAEOutput(
            reconstruction=self.decode(vq.quantized),
            quantization_loss=vq.codebook_loss + vq.commitment_loss,
            codebook_loss=vq.codebook_loss,
            commitment_loss=vq.commitment_loss,
            indices=vq.indices,
            perplexity=vq.perplexity,
            codebook_usage=vq.codebook_usage,
        )

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles instead of this network: its eval-mode forward, traced.

        The quantizer's training step (codebook initialisation and EMA updates across ranks) is not TorchScript, so
        scripting (``python -m monai.bundle ckpt_export network_def`` with its defaults, ``use_trace=False``) would
        fail. Exported models run in eval mode, where the forward has no data-dependent branch: its trace, at an
        example of ``4 * downsample_factor`` pixels a side, is the same function for any batch and image size.
        """
        size = [4 * self.downsample_factor] * self.spatial_dims
        example = torch.zeros(1, self.in_channels, *size, device=self.quantizer.embedding.device)
        with eval_mode(self):
            traced = torch.jit.trace(self, example)
        return _Traced(traced)

    def forward(
        self, images: torch.Tensor, return_details: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor | VQVAEOutput:
        """What ``forward_output`` names, or the full :class:`VQVAEOutput` when ``return_details``.

        Trainers ask for the details through ``forward`` (not :meth:`forward_with_details`) so that a
        ``DistributedDataParallel`` wrapper sees the call and synchronises gradients.
        """
        # an export traces the tensor forward: torch's legacy ONNX exporter even hands the default in as a tensor
        if not torch.jit.is_tracing() and return_details:
            return self.forward_with_details(images)
        if self.forward_output == "reconstruction":
            return self.reconstruct(images)
        output = self.forward_with_details(images)
        return output.reconstruction, output.quantization_loss


class _Traced(nn.Module):
    """What ``torch.jit.script`` makes of a :class:`VQVAE`: its traced eval-mode forward (see
    :meth:`VQVAE.__prepare_scriptable__`)."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, images: torch.Tensor):  # unannotated: TorchScript infers the tensor or the tuple it returns
        return self.traced(images)
