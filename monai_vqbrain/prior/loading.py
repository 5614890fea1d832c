"""Loading a trained prior (:func:`load_prior`), checked against the configured network, the VQ-VAE and image size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..networks.pixelcnn import GatedPixelCNN
from ..utils.checkpoint import (
    DEFAULT_MAX_CHECKPOINT_BYTES,
    check_checkpoint_file,
    check_finite_weights,
    check_state_dict_matches,
    checkpoint_byte_limit,
    metadata_file,
    read_model,
)
from .conditioning import position_channels
from .trainer import NETWORK_SETTINGS, prior_network_settings

# the overrides of the run that failed are not known here: the command says to repeat them
_TRAIN_PRIOR_COMMAND = (
    "python -m monai.bundle run training_prior --config_file "
    "\"['<bundle>/configs/train.json','<bundle>/configs/train_prior.json']\" with this run's settings "
    "(--bundle_root, --image_size, --network_def#... as here)"
)


def _read_prior_checkpoint(
    path: Path, max_bytes: int | None = DEFAULT_MAX_CHECKPOINT_BYTES
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The prior's weights, their metadata and the network settings it records, after checking it is a prior's;
    ``max_bytes`` bounds what the file may unpack to."""
    missing = f"prior checkpoint '{path}' does not exist; train the prior first: {_TRAIN_PRIOR_COMMAND}"
    check_checkpoint_file(path, missing, "prior checkpoint")
    state, metadata = read_model(path, max_bytes=max_bytes)
    settings = metadata.get("network_settings")
    if not metadata:
        raise CheckpointError(
            f"prior checkpoint '{path}' has no metadata file that describes it ('{metadata_file(path).name}' beside "
            f"it is missing, or describes other weights): the prior's settings are not known; use the "
            f"{path.name} and {metadata_file(path).name} that training_prior wrote together."
        )
    if metadata.get("network") != GatedPixelCNN.__name__ or not isinstance(settings, dict):
        raise CheckpointError(
            f"'{path}' is not a prior checkpoint: its metadata describes network={metadata.get('network')!r}, not a "
            f"{GatedPixelCNN.__name__} (was the VQ-VAE's model.pt given?); use the prior.pt written by training_prior."
        )
    return state, metadata, settings


def read_prior_settings(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The :class:`~monai_vqbrain.networks.GatedPixelCNN` arguments a prior checkpoint's metadata records.

    ``generate.json``'s ``prior_def`` takes its defaults from them, so a prior trained with other ``prior_def#...``
    settings (or ``prior_large.json``) generates without repeating them.

    Args:
        checkpoint: the prior's checkpoint, ``<ckpt_dir>/prior.pt``.

    Raises:
        CheckpointError: naming the file when it is missing or not a prior checkpoint.
    """
    return dict(_read_prior_checkpoint(Path(checkpoint))[2])


def load_prior(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    vqvae: torch.nn.Module | None = None,
    vqvae_sha256: str | None = None,
    image_size: int | None = None,
    network: GatedPixelCNN | None = None,
) -> tuple[GatedPixelCNN, dict[str, Any]]:
    """Load a prior's weights into the configured network (or one built from the checkpoint's metadata), checked
    against that metadata, the VQ-VAE and the image size.

    Args:
        checkpoint: the prior's best checkpoint, ``<ckpt_dir>/prior.pt``.
        device: where to put the network.
        vqvae: the VQ-VAE whose codes will be decoded; its codebook size must be the prior's.
        vqvae_sha256: the fingerprint of that VQ-VAE's checkpoint; it must be the one the prior was trained over.
        image_size: the configured image size; it must be the one the prior's code maps came from.
        network: the configured prior (``generate.json``'s ``prior_def``); its settings must be those the
            checkpoint's metadata records. None builds the network from that metadata.

    Returns:
        The prior in eval mode and its checkpoint metadata.

    Raises:
        CheckpointError: naming the file when it is missing, not a prior's, or does not fit the configured network,
            its own metadata, the VQ-VAE or the image size.
    """
    path = Path(checkpoint)
    limit = checkpoint_byte_limit(network) if network is not None else DEFAULT_MAX_CHECKPOINT_BYTES
    saved, metadata, settings = _read_prior_checkpoint(path, limit)
    codebook = getattr(getattr(vqvae, "module", vqvae), "num_embeddings", None)
    num_embeddings = int(settings.get("num_embeddings") or 0)
    # before the settings check: a prior over another codebook is the VQ-VAE's mismatch
    if codebook is not None and codebook != num_embeddings:
        raise CheckpointError(
            f"prior checkpoint '{path}' models {num_embeddings} codes but the VQ-VAE configured here has "
            f"num_embeddings={codebook}: it is a prior of another VQ-VAE."
        )
    if network is None:
        try:
            network = GatedPixelCNN(**settings)
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"prior checkpoint '{path}' records settings that build no network: {error}"
            ) from error
    else:
        configured = prior_network_settings(network)
        differing = [k for k in NETWORK_SETTINGS if k in settings and settings[k] != configured.get(k)]
        if differing:
            found = ", ".join(f"{k}={settings[k]!r} (configured: {configured.get(k)!r})" for k in differing)
            raise CheckpointError(
                f"prior checkpoint '{path}' records {found}: set prior_def#{differing[0]} to the checkpoint's value, "
                f"or leave prior_def to the checkpoint's metadata."
            )
    frequencies = int(metadata.get("position_frequencies") or 0)
    if settings.get("cond_channels") != position_channels(frequencies):
        raise CheckpointError(
            f"prior checkpoint '{path}' is inconsistent: its network takes cond_channels="
            f"{settings.get('cond_channels')} but its metadata records position_frequencies={frequencies} "
            f"(expected cond_channels={position_channels(frequencies)})."
        )
    check_state_dict_matches(network, saved, str(path))
    check_finite_weights(saved, str(path))
    network.load_state_dict(saved)

    if image_size is not None and "image_size" in metadata and int(metadata["image_size"]) != int(image_size):
        raise CheckpointError(
            f"prior checkpoint '{path}' was trained on the codes of {metadata['image_size']}-pixel images, but "
            f"image_size={image_size} is configured; set image_size to {metadata['image_size']}."
        )
    if vqvae_sha256 is not None and metadata.get("vqvae_sha256") not in (None, vqvae_sha256):
        raise CheckpointError(
            f"prior checkpoint '{path}' was trained over the codes of another VQ-VAE checkpoint than the one "
            f"configured ('{metadata.get('vqvae_checkpoint')}' at the time; the VQ-VAE was retrained or replaced "
            f"since), so its codes would decode to noise: train the prior again ({_TRAIN_PRIOR_COMMAND} and "
            f"--overwrite true)."
        )
    return network.to(device).eval(), metadata
