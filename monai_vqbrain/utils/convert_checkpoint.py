"""Convert checkpoints written before 0.5 into the current layout: ``python -m monai_vqbrain.utils.convert_checkpoint``.

Before 0.5 ``model.pt`` and ``prior.pt`` held ``{"model": state_dict, "metadata": {...}}``, which MONAI's tools and
a strict ``load_state_dict`` refuse; each becomes its state dict plus ``model.json``/``prior.json``, in place. A prior
records the SHA-256 of the VQ-VAE file it was trained over, so the priors in the same folder (``prior.pt``,
``prior_last.pt``) get the converted ``model.pt``'s new one (their code caches are rebuilt on next use).

Usage::

    python -m monai_vqbrain.utils.convert_checkpoint bundle/models            # a checkpoint folder
    python -m monai_vqbrain.utils.convert_checkpoint path/to/model.pt         # one file
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import (
    METADATA_KEY,
    convert_checkpoint,
    load_checkpoint,
    read_model,
    save_checkpoint,
    save_model,
)


def convert_checkpoints(target: str | os.PathLike) -> list[Path]:
    """Convert the old-layout model files of a checkpoint folder (``model.pt``, ``prior.pt``), or one file.

    Args:
        target: a checkpoint folder (``ckpt_dir``) or one model file.

    Returns:
        The files that were rewritten (converted, or a prior's VQ-VAE fingerprint updated).

    Raises:
        CheckpointError: naming a file that is missing or unreadable.
    """
    target = Path(target)
    if not target.is_dir():
        return [target] if convert_checkpoint(target) is not None else []
    vqvae, prior, prior_last = target / "model.pt", target / "prior.pt", target / "prior_last.pt"
    rewritten = []
    fingerprints = convert_checkpoint(vqvae) if vqvae.is_file() else None
    if fingerprints is not None:
        rewritten.append(vqvae)
    if prior.is_file():
        if convert_checkpoint(prior) is not None:
            rewritten.append(prior)
        if fingerprints is not None:
            state, metadata = read_model(prior)
            if metadata.get("vqvae_sha256") == fingerprints[0]:
                save_model(prior, state, {**metadata, "vqvae_sha256": fingerprints[1]})
                if prior not in rewritten:
                    rewritten.append(prior)
    if fingerprints is not None and prior_last.is_file():
        state = load_checkpoint(prior_last)
        metadata = state.get(METADATA_KEY) or {}
        if metadata.get("vqvae_sha256") == fingerprints[0]:
            save_checkpoint(prior_last, {**state, METADATA_KEY: {**metadata, "vqvae_sha256": fingerprints[1]}})
            rewritten.append(prior_last)
    return rewritten


def main(argv: list[str] | None = None) -> int:
    """Command line of :func:`convert_checkpoints`; returns the exit status (2 for a bad file)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_vqbrain.utils.convert_checkpoint",
        description="Convert old-layout model.pt/prior.pt files in place into a state dict plus model.json/prior.json.",
    )
    parser.add_argument("target", help="a checkpoint folder (e.g. bundle/models) or one model file")
    args = parser.parse_args(argv)
    try:
        rewritten = convert_checkpoints(args.target)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in rewritten:
        print(f"converted {path}")
    if not rewritten:
        print(f"nothing to convert in {args.target}: already in the current layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
