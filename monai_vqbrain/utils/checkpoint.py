"""Checkpoint files: atomic saving, safe loading (no code execution) and clear errors for the wrong network.

A trained network is saved as model-zoo bundles save it: ``model.pt`` holds the state dict only, so
``network_def.load_state_dict(torch.load("model.pt"))``, ``monai.bundle.load`` and MONAI's ``ckpt_export``/
``onnx_export`` work with their defaults. What produced the weights (network settings, image size, epoch, metric)
is in ``model.json`` beside it, which names the weights by their SHA-256 (see :func:`save_model`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, OutputWriteError
from .io import atomic_path, atomic_write_text
from .modules import unwrap_network

logger = logging.getLogger(__name__)

#: key under which a training state (``last.pt``) stores what produced it (network settings, image size, epoch)
METADATA_KEY = "metadata"

#: the ``format`` of a model's metadata file
MODEL_METADATA_FORMAT = "monai_vqbrain.model_metadata/1"

#: how to convert checkpoints written before model files held only the state dict
CONVERT_COMMAND = "python -m monai_vqbrain.utils.convert_checkpoint <ckpt_dir>"

# files whose old layout has been reported already: one line per file and process
_REPORTED: set[Path] = set()

# a model's metadata file holds settings and numbers (a few KB): anything far larger is not one, and is not read
_MAX_METADATA_FILE_BYTES = 16 * 2**20

DEFAULT_MAX_CHECKPOINT_BYTES = 2**30
"""Most bytes a checkpoint may unpack to when no network is at hand to bound it (1 GiB; the default prior's
``prior_last.pt`` holds about 20 MB)."""


def checkpoint_byte_limit(*networks: nn.Module) -> int:
    """The most bytes a checkpoint of these networks may unpack to: 4x their weights and buffers, plus 64 MiB.

    ``last.pt`` holds the weights and Adam's two moment estimates (3x; one more copy is slack, the 64 MiB cover
    metadata, history, scheduler and the pickle); anything far beyond is not a checkpoint of these networks (a
    re-zipped file declaring gigabytes of zeros), and is refused before a byte is unpacked.

    Args:
        networks: the networks the checkpoint is for (a DDP wrapper's ``module`` is used).
    """
    weights = 0
    for network in map(unwrap_network, networks):
        weights += sum(t.nbytes for t in (*network.parameters(), *network.buffers()))
    return 4 * weights + 64 * 2**20


def check_checkpoint_size(path: str | os.PathLike, max_bytes: int | None) -> None:
    """Refuse (``CheckpointError``) a checkpoint that would unpack to more than ``max_bytes`` (None: any size).

    ``torch.save`` writes a zip archive whose central directory lists the uncompressed size of every entry; a file
    in the legacy (pickle) format, like a ``.safetensors`` file, holds its tensors uncompressed, so its own size
    bounds them.
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
        _torch_save(checkpoint, tmp, path)
    return Path(path)


def _torch_save(obj: Any, tmp: Path, path: str | os.PathLike) -> None:
    try:
        torch.save(obj, tmp)
    except RuntimeError as error:
        # torch's C++ writer reports a full disk as "basic_ios::clear: iostream error" or "failed writing file"
        raise OutputWriteError(
            f"cannot write checkpoint '{path}' ({str(error).splitlines()[0]}); is the disk full or read-only?"
        ) from error


def check_checkpoint_file(path: str | os.PathLike, missing: str | None = None, name: str = "checkpoint") -> Path:
    """Return ``path`` if it is a regular file; else refuse it, naming it and saying what it is instead (missing, a
    folder, a FIFO, socket or device, or a link to nothing).

    Args:
        path: the checkpoint's path.
        missing: the message for a path where nothing exists; None says to train first.
        name: what the file is, as the messages name it (``prior checkpoint``).

    Raises:
        CheckpointError: naming the path when it is not a regular file.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_symlink() and not path.exists():
        raise CheckpointError(
            f"{name} '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist; mend the link or "
            f"pass the checkpoint's own path."
        )
    if not path.exists():
        raise CheckpointError(missing or f"{name} '{path}' does not exist; train first or pass the right path.")
    kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
    raise CheckpointError(
        f"{name} '{path}' is {kind}; expected the checkpoint file itself (a .pt or .safetensors file)."
    )


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    max_bytes: int | None = DEFAULT_MAX_CHECKPOINT_BYTES,
) -> dict[str, Any]:
    """Load a checkpoint without executing code from it: a ``.safetensors`` file with safetensors, anything else with
    ``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and plain containers.

    Args:
        path: the checkpoint file.
        map_location: where to load the tensors.
        max_bytes: the most bytes it may unpack to, checked before loading (:func:`checkpoint_byte_limit` of the
            network it is for); None allows any size.

    Raises:
        CheckpointError: naming the file, when it is missing, too large, unreadable, unsafe or not a dictionary.
    """
    path = check_checkpoint_file(path)
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
    """The network weights of a loaded checkpoint: its ``"model"`` entry (a training state, the old layout), or the
    checkpoint itself when it is a state dict."""
    state = checkpoint.get("model", checkpoint)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}


def check_state_dict_matches(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming ``source`` when ``state`` was saved from a different architecture."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{k}: checkpoint {found[k]} vs network {v}" for k, v in expected.items() if found.get(k, v) != v]
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


def metadata_file(path: str | os.PathLike) -> Path:
    """The metadata file beside a model file: ``model.pt`` -> ``model.json``, ``prior.pt`` -> ``prior.json``."""
    return Path(path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_old_layout(checkpoint: dict[str, Any]) -> bool:
    """Whether a loaded model file is in the layout written before 0.5: ``{"model": weights, "metadata": {...}}``
    (with or without the same weights again at its top level), which a strict ``load_state_dict`` refuses; a
    ``last.pt`` training state also holds its weights under ``"model"``, beside ``"trainer"`` or ``"optimizer"``."""
    return isinstance(checkpoint.get("model"), dict) and not ("trainer" in checkpoint or "optimizer" in checkpoint)


def _warn_once(path: Path, message: str) -> None:
    if path.absolute() not in _REPORTED:
        _REPORTED.add(path.absolute())
        logger.warning(message)


def _read_metadata_document(path: Path) -> dict[str, Any] | None:
    sidecar = metadata_file(path)
    if not sidecar.is_file():
        return None
    if sidecar.stat().st_size > _MAX_METADATA_FILE_BYTES:
        raise CheckpointError(
            f"metadata file '{sidecar}' of '{path}' is {sidecar.stat().st_size:,} bytes, more than a model's metadata "
            f"({_MAX_METADATA_FILE_BYTES:,} at most); use the pair that training wrote."
        )
    try:
        document = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"metadata file '{sidecar}' of '{path}' is not readable JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != MODEL_METADATA_FORMAT:
        raise CheckpointError(
            f"'{sidecar}' is not the metadata file of '{path}' (expected a JSON object with format "
            f"{MODEL_METADATA_FORMAT!r}); move it away or use the pair that training wrote."
        )
    return document


def _entry_for(path: Path, document: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entry of the metadata document that describes the bytes of ``path`` now: its own, or the previous one
    (a run killed after writing the metadata file of new weights but before moving them onto ``path``)."""
    if document is None or not path.is_file():
        return None
    digest = file_sha256(path)
    for entry in (document, document.get("previous")):
        if isinstance(entry, dict) and entry.get("weights_sha256") == digest:
            return entry
    return None


def save_model(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], overwrite: bool = True
) -> Path:
    """Save a network's state dict to ``path`` and ``metadata`` to :func:`metadata_file` beside it, consistently.

    The metadata file names the weights it describes by their SHA-256. The writes are ordered so that a process
    killed at any instant leaves a pair a reader resolves: (1) the weights go to a temporary file beside ``path``;
    (2) the metadata file, keeping the current weights' entry as ``previous``, replaces the old one atomically; (3)
    the temporary file is renamed onto ``path``. Killed before (2), the old pair is intact; between (2) and (3),
    ``previous`` describes the old weights still in ``path``. The next run's start-up checks remove the temporary file.

    Args:
        path: the weights file (``model.pt``, ``prior.pt``).
        state_dict: the network's state dict.
        metadata: what produced the weights; must be JSON (numbers, strings, lists, dicts).
        overwrite: when False and ``path`` exists, refuse (``FileExistsError``).

    Raises:
        OutputWriteError: naming the file when it cannot be written (full disk, read-only folder, no permission).
    """
    path = Path(path)
    try:
        previous = _entry_for(path, _read_metadata_document(path))
    except CheckpointError:  # an unreadable metadata file is replaced; it described nothing we can use
        previous = None
    if previous is not None:
        previous = {"weights_sha256": previous["weights_sha256"], "metadata": previous.get("metadata", {})}
    with atomic_path(path, overwrite=overwrite) as tmp:
        _torch_save(dict(state_dict), tmp, path)
        document = {
            "format": MODEL_METADATA_FORMAT,
            "weights": path.name,
            "weights_sha256": file_sha256(tmp),
            "metadata": metadata,
            "previous": previous,
        }
        atomic_write_text(metadata_file(path), json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def read_model_metadata(
    path: str | os.PathLike,
    checkpoint: dict[str, Any] | None = None,
    max_bytes: int | None = DEFAULT_MAX_CHECKPOINT_BYTES,
) -> dict[str, Any]:
    """What produced the weights in a model file: the entry of its metadata file that describes them.

    A file in the old layout carries its metadata inside (reported once, with how to convert it); a state dict
    without a metadata file that describes it (copied from elsewhere, or replaced by hand) has none: ``{}``, with a
    warning, since then its image size and settings cannot be checked.

    Args:
        path: the weights file.
        checkpoint: the file's loaded content, when the caller has it (saves loading it again).
        max_bytes: the most bytes the file may unpack to, when it must be loaded (an old layout, or no metadata
            file describes it); see :func:`checkpoint_byte_limit`.

    Raises:
        CheckpointError: naming the file when it or its metadata file is not readable.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return dict((checkpoint or load_checkpoint(path, max_bytes=max_bytes)).get(METADATA_KEY) or {})
    document = _read_metadata_document(path)
    entry = _entry_for(path, document)
    if entry is not None:
        return dict(entry.get("metadata") or {})
    checkpoint = load_checkpoint(path, max_bytes=max_bytes) if checkpoint is None else checkpoint
    if isinstance(checkpoint.get("model"), dict):  # a training state, or a model file in the old layout
        if is_old_layout(checkpoint):
            _warn_once(
                path,
                f"'{path}' is in the old checkpoint layout (weights and metadata in one file, which MONAI's tools "
                f"refuse without --key_in_ckpt model); it still loads; convert it with: {CONVERT_COMMAND}",
            )
        return dict(checkpoint.get(METADATA_KEY) or {})
    why = "there is none" if document is None else "it describes other weights (the file was replaced since)"
    _warn_once(
        path,
        f"'{path}' has no metadata beside it ('{metadata_file(path).name}': {why}): its image size and training "
        f"settings are not known and not checked.",
    )
    return {}


def read_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    max_bytes: int | None = DEFAULT_MAX_CHECKPOINT_BYTES,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A model file's state dict and its metadata (see :func:`read_model_metadata`), in either layout.

    Args:
        path: the weights file (``model.pt``, ``prior.pt``, a ``last.pt`` training state or a ``.safetensors`` file).
        map_location: where to load the tensors.
        max_bytes: the most bytes the file may unpack to, checked before loading (:func:`checkpoint_byte_limit`).

    Raises:
        CheckpointError: naming the file when it is missing, too large, unsafe or unreadable.
    """
    checkpoint = load_checkpoint(path, map_location=map_location, max_bytes=max_bytes)
    return network_state_dict(checkpoint), read_model_metadata(path, checkpoint)


def convert_checkpoint(path: str | os.PathLike) -> tuple[str, str] | None:
    """Convert a model file (``model.pt``, ``prior.pt``) in the old layout, in place, into the state dict plus its
    metadata file; nothing is lost. A file already in the current layout is left alone.

    Returns:
        ``(old SHA-256, new SHA-256)`` of the file when it was converted, else None.

    Raises:
        CheckpointError: naming the file when it is missing or unreadable.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    if not is_old_layout(checkpoint):
        return None
    before = file_sha256(path)
    save_model(path, network_state_dict(checkpoint), dict(checkpoint.get(METADATA_KEY) or {}))
    _REPORTED.discard(path.absolute())
    return before, file_sha256(path)


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
    state, metadata = read_model(path, map_location=map_location, max_bytes=checkpoint_byte_limit(network))
    if not state:
        raise CheckpointError(
            f"checkpoint '{path}' holds no network weights (expected a state dict or a 'model' entry)."
        )
    check_state_dict_matches(network, state, str(path))
    check_finite_weights(state, str(path))
    for key, value in (expected_metadata or {}).items():
        if key in metadata and str(metadata[key]) != str(value):
            raise CheckpointError(
                f"checkpoint '{path}' was trained with {key}={metadata[key]}, but {key}={value} is configured; "
                f"set {key} to {metadata[key]} or use a checkpoint trained with {key}={value}."
            )
    network.load_state_dict(state)
    return metadata
