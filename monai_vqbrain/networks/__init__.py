"""Networks: the VQ-VAE with its vector quantizer, and the Gated PixelCNN prior over its codes."""

from .blocks import Downsample, ResidualLayer, ResidualStack, Upsample
from .pixelcnn import GatedPixelCNN
from .pixelcnn_layer import GatedPixelCNNLayer
from .quantizer import QuantizerOutput, VectorQuantizer, code_usage_statistics, count_codes
from .vqvae import VQVAE, Decoder, Encoder, VQVAEOutput

__all__ = [
    "VQVAE",
    "Decoder",
    "Downsample",
    "Encoder",
    "GatedPixelCNN",
    "GatedPixelCNNLayer",
    "QuantizerOutput",
    "ResidualLayer",
    "ResidualStack",
    "Upsample",
    "VQVAEOutput",
    "VectorQuantizer",
    "code_usage_statistics",
    "count_codes",
]
