"""Checks a bundle run makes before it writes anything, and the metadata it stores in checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError
from ..utils.flags import as_bool
from ..utils.modules import unwrap_network


def check_checkpoint_dir(
    ckpt_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False, filenames: tuple[str, ...] = ("model.pt", "last.pt")
) -> Path | None:
    """Refuse to overwrite existing checkpoints unless asked; return the checkpoint to resume from, if any.

    Args:
        ckpt_dir: the folder training writes checkpoints to.
        resume: continue from ``<ckpt_dir>/<filenames[-1]>`` (the last training state).
        overwrite: start a new training run over existing checkpoints.
        filenames: the checkpoint files the run writes; the last one is the resumable training state.

    Raises:
        CheckpointError: when checkpoints exist and neither ``resume`` nor ``overwrite`` is set, or when
            ``resume`` is set and there is nothing to resume from.
    """
    ckpt_dir = Path(ckpt_dir)
    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    resumable = ckpt_dir / filenames[-1]
    if resume:
        if not resumable.is_file():
            raise CheckpointError(f"resume was asked for but '{resumable}' does not exist; train without --resume first.")
        return resumable
    existing = [ckpt_dir / name for name in filenames if (ckpt_dir / name).exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"'{existing[0]}' already exists and would be overwritten by a new training run; pass --resume true to "
            f"continue it, --overwrite true to start over, or --ckpt_dir to train into another folder."
        )
    return None


def network_metadata(network: nn.Module, **entries: Any) -> dict[str, Any]:
    """Metadata stored in checkpoints: the network's class and settings plus ``entries`` (e.g. ``image_size``)."""
    network = unwrap_network(network)
    settings = {
        name: getattr(network, name)
        for name in ("spatial_dims", "in_channels", "out_channels", "channels", "num_embeddings", "embedding_dim")
        if hasattr(network, name)
    }
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return {"network": type(network).__name__, **settings, **entries}
