"""Checkpoint files: atomic saving, safe loading (no code execution) and clear errors for the wrong network."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, OutputWriteError
from .io import atomic_path
from .modules import unwrap_network

#: key under which a checkpoint stores what produced it (network settings, image size, epoch, metrics)
METADATA_KEY = "metadata"

DEFAULT_MAX_CHECKPOINT_BYTES = 2**30
"""Most bytes a checkpoint may unpack to when no network is at hand to bound it (1 GiB; the default prior's
``prior_last.pt`` holds about 20 MB)."""

# a training checkpoint holds the weights, Adam's two moments and small state; one more copy of slack
_CHECKPOINT_COPIES = 4
_CHECKPOINT_SLACK_BYTES = 64 * 2**20  # metadata, history, scheduler and the pickle itself


def checkpoint_byte_limit(*networks: nn.Module) -> int:
    """The most bytes a checkpoint of these networks may unpack to: 4x their weights and buffers, plus 64 MiB.

    ``last.pt`` holds the weights and Adam's two moment estimates (3x), ``model.pt`` the weights alone; anything
    far beyond is not a checkpoint of these networks (a re-zipped file declaring gigabytes of zeros), and is refused
    before a byte is unpacked.

    Args:
        networks: the networks the checkpoint is for (a DDP wrapper's ``module`` is used).
    """
    weights = 0
    for network in networks:
        network = unwrap_network(network)
        weights += sum(t.numel() * t.element_size() for t in (*network.parameters(), *network.buffers()))
    return _CHECKPOINT_COPIES * weights + _CHECKPOINT_SLACK_BYTES


def check_checkpoint_size(path: str | os.PathLike, max_bytes: int | None) -> None:
    """Refuse a checkpoint that would unpack to more than ``max_bytes``, from its zip directory, before loading it.

    ``torch.save`` writes a zip archive whose central directory lists the uncompressed size of every entry; a file
    in the legacy (pickle) format, like a ``.safetensors`` file, holds its tensors uncompressed, so its own size
    bounds them.

    Args:
        path: the checkpoint file.
        max_bytes: the bound (see :func:`checkpoint_byte_limit`); None allows any size.

    Raises:
        CheckpointError: naming the file, its unpacked size and the bound.
    """
    if max_bytes is None:
        return
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        unpacked = path.stat().st_size  # not a (whole) zip: torch.load judges it, and its tensors are stored as is
    if unpacked > max_bytes:
        raise CheckpointError(
            f"checkpoint '{path}' unpacks to {unpacked:,} bytes, more than the {int(max_bytes):,} a checkpoint of "
            f"this network can hold; it is not a checkpoint of the network configured here (or it was tampered "
            f"with): use the checkpoint training wrote."
        )


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any], overwrite: bool = True) -> Path:
    """``torch.save`` ``checkpoint`` to ``path`` atomically (readers never see a partial file).

    Raises:
        OutputWriteError: naming ``path`` when it cannot be written (full disk, read-only folder, no permission).
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            torch.save(checkpoint, tmp)
        except RuntimeError as error:
            # torch's C++ writer reports a full disk as "basic_ios::clear: iostream error" or "failed writing file"
            raise OutputWriteError(
                f"cannot write checkpoint '{path}' ({str(error).splitlines()[0]}); is the disk full or read-only?"
            ) from error
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    max_bytes: int | None = DEFAULT_MAX_CHECKPOINT_BYTES,
) -> dict[str, Any]:
    """Load a checkpoint without executing code from it.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``,
    which refuses pickled objects other than tensors and plain containers.

    Args:
        path: the checkpoint file.
        map_location: where to load the tensors.
        max_bytes: the most bytes it may unpack to, checked before loading (:func:`checkpoint_byte_limit` of the
            network it is for); None allows any size.

    Raises:
        CheckpointError: naming the file, when it is missing, too large, unreadable, unsafe or not a dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; train first or pass the right path.")
    check_checkpoint_size(path, max_bytes)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                file_metadata = handle.metadata() or {}
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"checkpoint '{path}' is not a readable safetensors file: {error}") from error
        return {"model": tensors, METADATA_KEY: dict(file_metadata)}
    with open(path, "rb") as handle:
        start = handle.read(2)
    # torch.save writes a zip archive, or a pickle (protocol >= 2 starts with 0x80) in its legacy format; anything
    # else is not a checkpoint, whatever torch's unpickler would say about it
    if start == b"PK" and not zipfile.is_zipfile(path):
        # zip archives end with their table of contents: a cut-short write (full disk, killed copy) loses it
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt: a zip archive (as torch.save writes) without its end "
            f"({path.stat().st_size} bytes); the write or copy that made it was cut short: use another checkpoint, "
            f"copy it again or train again."
        )
    if not (zipfile.is_zipfile(path) or start[:1] == b"\x80"):
        raise CheckpointError(
            f"checkpoint '{path}' is not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with "
            f"{start!r}); expected a file written by torch.save, or a .safetensors file."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint '{path}' holds objects other than tensors and plain containers, which are refused "
            f"because loading them could run code ({str(error).splitlines()[0]})."
        ) from error
    except Exception as error:  # torch raises many types for damaged files (RuntimeError, EOFError, IndexError, ...)
        raise CheckpointError(f"checkpoint '{path}' is not a readable PyTorch checkpoint: {error}") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' should hold a dictionary, found {type(checkpoint).__name__}.")
    return checkpoint


def network_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint: its ``"model"`` entry, or the checkpoint itself if it is a state dict."""
    state = checkpoint.get("model", checkpoint)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}


def check_state_dict_matches(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming ``source`` when ``state`` was saved from a different architecture."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{k}: checkpoint {found[k]} vs network {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            details.append("shape mismatches: " + "; ".join(mismatched[:4]) + (" ..." if len(mismatched) > 4 else ""))
        if missing:
            details.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint '{source}' was saved from a different network than {type(network).__name__} configured here "
            f"({'; '.join(details)}). Use the network settings it was trained with, or another checkpoint."
        )


def check_finite_weights(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming ``source`` when a floating-point tensor of ``state`` holds NaN or inf.

    Such weights (a diverged run, a damaged file) would make every output NaN: black images and metrics that look
    like numbers.
    """
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint '{source}' holds non-finite (NaN or inf) weights in {len(bad)} tensor(s) (e.g. {bad[0]}); "
            f"the run that saved it diverged or the file is damaged: use another checkpoint or train again."
        )


def load_network_weights(
    network: nn.Module,
    path: str | os.PathLike,
    expected_metadata: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint's network weights into ``network`` after checking it fits; return its metadata.

    Args:
        network: the network to load into (a DDP wrapper's ``module`` is used).
        path: the checkpoint file.
        expected_metadata: entries (e.g. ``{"image_size": 128}``) the checkpoint's metadata must match when it
            records them.
        map_location: where to load the tensors.

    Raises:
        CheckpointError: naming the file, for a missing/unsafe/unreadable file, another architecture, non-finite
            weights, or a metadata mismatch.
    """
    network = unwrap_network(network)
    checkpoint = load_checkpoint(path, map_location=map_location, max_bytes=checkpoint_byte_limit(network))
    state = network_state_dict(checkpoint)
    if not state:
        raise CheckpointError(f"checkpoint '{path}' holds no network weights (expected a state dict or a 'model' entry).")
    check_state_dict_matches(network, state, str(path))
    check_finite_weights(state, str(path))
    metadata = checkpoint.get(METADATA_KEY, {}) or {}
    for key, value in (expected_metadata or {}).items():
        if key in metadata and str(metadata[key]) != str(value):
            raise CheckpointError(
                f"checkpoint '{path}' was trained with {key}={metadata[key]}, but {key}={value} is configured; "
                f"set {key} to {metadata[key]} or use a checkpoint trained with {key}={value}."
            )
    network.load_state_dict(state)
    return dict(metadata)
