"""The one version of monai_vqbrain: ``pyproject.toml`` reads it, and ``bundle/configs/metadata.json`` repeats it."""

__version__ = "0.8.1"
