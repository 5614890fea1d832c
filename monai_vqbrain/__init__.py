"""monai_vqbrain: a VQ-VAE and a PixelCNN prior for 2D brain MRI, as a MONAI plugin and bundle."""

from ._version import __version__

__all__ = ["__version__"]
