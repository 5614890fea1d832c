"""monai_vqbrain: a VQ-VAE and a PixelCNN prior for 2D brain MRI, as a MONAI plugin and bundle."""

__version__ = "0.1.0"
