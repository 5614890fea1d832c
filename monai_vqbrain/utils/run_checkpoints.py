"""Checks of a training run's checkpoint folder and the metadata its checkpoints carry: shared by the VQ-VAE's
workflows and the prior's trainer (a layer below both)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, SettingError
from .checkpoint import METADATA_KEY, load_checkpoint, metadata_file
from .flags import as_bool
from .io import remove_stale_temporary_files
from .modules import unwrap_network

# files besides the checkpoints that training runs write atomically into ``ckpt_dir``
_OTHER_RUN_FILES = ("training_history.json", "prior_training_history.json", "codes_train.pt", "codes_validate.pt")


def check_checkpoint_dir(
    ckpt_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    filenames: tuple[str, ...] = ("model.pt", "last.pt"),
    max_epochs: int | None = None,
    expected_metadata: Mapping[str, Any] | None = None,
    max_epochs_key: str = "max_epochs",
) -> Path | None:
    """Refuse to overwrite existing checkpoints unless asked; return the checkpoint to resume from, if any.

    Temporary files that a killed run left beside the checkpoints are removed first.

    Args:
        ckpt_dir: the folder training writes checkpoints to.
        resume: continue from ``<ckpt_dir>/<filenames[-1]>`` (the last training state).
        overwrite: start a new training run over existing checkpoints.
        filenames: the checkpoint files the run writes; the last one is the resumable training state.
        max_epochs: the run's epochs; resuming a state saved at or after it is refused (nothing left to train).
        expected_metadata: entries (``image_size``, network settings) the resumed state's metadata must match.
        max_epochs_key: the setting that sets ``max_epochs``, for the message.

    Raises:
        CheckpointError: when checkpoints exist and neither ``resume`` nor ``overwrite`` is set, when there is nothing
            to resume from (``resume`` set, or a best model without a training state), or when the state was saved
            with other settings.
        SettingError: when the resumed state has already trained ``max_epochs`` epochs.
    """
    ckpt_dir = Path(ckpt_dir)
    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    # the best-model files (all but the last) have their metadata file beside them (model.pt: model.json)
    sidecars = tuple(metadata_file(name).name for name in filenames[:-1])
    remove_stale_temporary_files(ckpt_dir, (*filenames, *sidecars, *_OTHER_RUN_FILES))
    resumable = ckpt_dir / filenames[-1]
    existing = [ckpt_dir / name for name in (*filenames, *sidecars) if (ckpt_dir / name).exists()]
    if existing and not resumable.exists() and (resume or not overwrite):
        # the best model of epoch 1 is written before the first training state: a run killed (or out of disk) in
        # between left a best model and nothing to resume from; a rerun and a --resume run say the same
        raise CheckpointError(
            f"'{existing[0]}' exists but '{resumable}' does not: the run that wrote it ended before saving a training "
            f"state (killed or out of disk space in its first epoch), so there is nothing to resume; pass "
            f"--overwrite true (without --resume) to train again from the start, or --ckpt_dir to train into another "
            f"folder."
        )
    if resume:
        if not resumable.is_file():
            raise CheckpointError(
                f"resume was asked for but '{resumable}' does not exist; train without --resume first."
            )
        _check_resumable(resumable, max_epochs, expected_metadata or {}, max_epochs_key)
        return resumable
    if existing and not overwrite:
        raise CheckpointError(
            f"'{existing[0]}' already exists and would be overwritten by a new training run; pass --resume true to "
            f"continue it, --overwrite true to start over, or --ckpt_dir to train into another folder."
        )
    return None


def _check_resumable(resumable: Path, max_epochs: int | None, expected: Mapping[str, Any], max_epochs_key: str) -> None:
    metadata = load_checkpoint(resumable).get(METADATA_KEY, {}) or {}
    for key, value in expected.items():
        if key in ("epoch", "key_metric") or key not in metadata:
            continue
        saved = list(metadata[key]) if isinstance(metadata[key], tuple) else metadata[key]
        value = list(value) if isinstance(value, tuple) else value
        if saved != value:
            raise CheckpointError(
                f"'{resumable}' was trained with {key}={saved}, but {key}={value} is configured: a resumed run must "
                f"keep the network and image size; set {key} to {saved}, or pass --overwrite true (without --resume) "
                f"to start a new run."
            )
    done = metadata.get("epoch")
    if max_epochs is not None and isinstance(done, int) and done >= int(max_epochs):
        raise SettingError(
            f"nothing left to train: '{resumable}' has already trained {done} epoch(s) and {max_epochs_key} is "
            f"{max_epochs}; pass --{max_epochs_key} above {done} to train more."
        )


def network_metadata(network: nn.Module, **entries: Any) -> dict[str, Any]:
    """Metadata stored in checkpoints: the network's class and settings plus ``entries`` (e.g. ``image_size``)."""
    network = unwrap_network(network)
    names = ("spatial_dims", "in_channels", "out_channels", "channels", "num_embeddings", "embedding_dim")
    settings = {name: getattr(network, name) for name in names if hasattr(network, name)}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return {"network": type(network).__name__, **settings, **entries}
