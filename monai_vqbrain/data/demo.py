"""Built-in demo data: skull-stripped axial T1 brain slices in the OASIS PNG layout, made locally from a real atlas.

Each case is a subject drawn from the MNI152 brain template (:mod:`monai_vqbrain.data.template`), as the model card
(``bundle/docs/README.md``, "Data") describes. The output mirrors ``keras_png_slices_data`` exactly, including the
segmentation masks (0 background, 85 CSF, 170 grey matter, 255 white matter), so the demo exercises the same code
path as the real data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from monai_vqbrain.data.oasis import PNG_FOLDER_PREFIX, SPLITS
from monai_vqbrain.data.template import (
    TEMPLATE_NAME,
    brain_covering_positions,
    draw_subject,
    load_brain_template,
    render_subject,
)
from monai_vqbrain.errors import DatasetError
from monai_vqbrain.utils.io import atomic_write_text

DEMO_DIR_ENV = "MONAI_VQBRAIN_DEMO_DIR"
"""Environment variable that overrides the default demo folder."""

DEMO_MARKER = ".monai_vqbrain_demo.json"
"""File written last into a finished demo dataset; it records the parameters the dataset was made with."""

DEFAULT_NUM_CASES = (96, 8, 16)
"""Cases in the (train, validate, test) splits of the default demo set: 1536 / 128 / 256 slices, 16 per case (the
test split is large enough for the generation metrics' 256-sample comparisons)."""

FIELD_OF_VIEW_MM = 220.0
"""Side of the square field of view of the demo slices: the brain's length is about 0.8 of it, as in OASIS."""

# bump when the images change, so that cached demo datasets of an older generator are regenerated
_GENERATOR_VERSION = 3  # 3: no slice is empty (see template.brain_covering_positions)
_logger = logging.getLogger(__name__)


def default_demo_dir() -> Path:
    """The demo dataset folder: ``$MONAI_VQBRAIN_DEMO_DIR`` if set, else ``~/.cache/monai_vqbrain/demo_oasis``."""
    override = os.environ.get(DEMO_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "monai_vqbrain" / "demo_oasis"


def _demo_parameters(num_cases: Sequence[int], slices_per_case: int, image_size: int, seed: int) -> dict:
    """Check the arguments of :func:`generate_demo_dataset`; return them as its marker file records them."""
    try:
        counts = [int(n) for n in num_cases]
    except TypeError as err:
        raise ValueError(f"num_cases must be three counts (train, validate, test), got {num_cases!r}") from err
    if len(counts) != len(SPLITS) or min(counts) < 1:
        raise ValueError(f"num_cases must be three positive counts (train, validate, test), got {num_cases!r}")
    if int(slices_per_case) < 1:
        raise ValueError(f"slices_per_case must be positive, got {slices_per_case!r}")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size!r}")
    return {
        "generator": "monai_vqbrain.data.demo",
        "version": _GENERATOR_VERSION,
        "template": TEMPLATE_NAME,
        "num_cases": counts,
        "slices_per_case": int(slices_per_case),
        "image_size": int(image_size),
        "seed": int(seed),
    }


def generate_demo_dataset(
    root: str | os.PathLike,
    num_cases: Sequence[int] = DEFAULT_NUM_CASES,
    slices_per_case: int = 16,
    image_size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a synthetic brain MRI dataset in the OASIS PNG layout.

    Cases are numbered from 1 across the splits (train first), so no case is in two splits; a case's anatomy
    depends only on ``seed`` and its number. No slice is empty: the brain covers at least
    :data:`~monai_vqbrain.data.template.MIN_BRAIN_FRACTION` of every slice. Files are named
    ``case_XXX_slice_Y.nii.png`` (masks ``seg_XXX_slice_Y.nii.png``) whatever ``image_size`` is.

    Args:
        root: the folder to write; it must be absent or empty.
        num_cases: cases in (train, validate, test).
        slices_per_case: axial slices per case, ``Y`` = 0 (lowest) .. ``slices_per_case - 1`` (highest).
        image_size: side of the square slices in pixels (OASIS: 256).
        seed: the random seed; equal arguments give identical files.

    Returns:
        The absolute dataset folder.

    Raises:
        DatasetError: when ``root`` exists and is not an empty folder.
        ValueError: for invalid counts or sizes.
    """
    parameters = _demo_parameters(num_cases, slices_per_case, image_size, seed)
    root = Path(root).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"cannot write the demo dataset into '{root}': expected a missing or empty folder")
    template = load_brain_template()  # before any file is written: a missing template leaves nothing behind
    # every axial level, from the base of the cerebellum to near the vertex
    positions = np.linspace(0.0, 1.0, int(slices_per_case), dtype=np.float32)
    case_number, started = 0, time.perf_counter()
    for split, count in zip(SPLITS, parameters["num_cases"], strict=True):
        # a timestamped line a split: the whole generation takes about a minute on a CPU
        _logger.info(
            f"demo data: drawing the {split} split, {count} case(s) of {int(slices_per_case)} slices "
            f"({time.perf_counter() - started:.0f} s)"
        )
        image_dir, seg_dir = root / f"{PNG_FOLDER_PREFIX}{split}", root / f"{PNG_FOLDER_PREFIX}seg_{split}"
        for folder in (image_dir, seg_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            case_number += 1
            rng = np.random.default_rng([int(seed), case_number])
            subject = draw_subject(rng)
            covered = brain_covering_positions(template, subject, positions, FIELD_OF_VIEW_MM)
            images, labels = render_subject(template, subject, covered, int(image_size), FIELD_OF_VIEW_MM, rng)
            pixels = np.rint(images * 255.0).astype(np.uint8)
            for index in range(len(positions)):
                Image.fromarray(pixels[index]).save(image_dir / f"case_{case_number:03d}_slice_{index}.nii.png")
                Image.fromarray(labels[index]).save(seg_dir / f"seg_{case_number:03d}_slice_{index}.nii.png")
    atomic_write_text(root / DEMO_MARKER, json.dumps(parameters, indent=2) + "\n")
    return root.resolve()


def _read_marker(root: Path) -> dict | None:
    """The parameters recorded in a demo dataset's marker file, or None when there is no readable marker."""
    try:
        return json.loads((root / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_demo_dataset(root: str | os.PathLike | None = None, **generate_kwargs: int) -> Path:
    """Return a demo dataset folder, generating it on first use and reusing it afterwards.

    The dataset is generated into a temporary sibling folder and renamed into place in one step, so a reader never
    sees a partial dataset and two processes racing to create it both end up with one complete copy (the loser
    discards its own). A demo dataset made with other parameters (or by an older generator) is replaced; any other
    non-empty folder is left alone.

    Args:
        root: the dataset folder; :func:`default_demo_dir` when None.
        generate_kwargs: ``num_cases``, ``slices_per_case``, ``image_size``, ``seed`` of :func:`generate_demo_dataset`.

    Returns:
        The absolute dataset folder.

    Raises:
        DatasetError: when ``root`` exists, is not empty and is not a demo dataset.
    """
    root = Path(root).expanduser() if root is not None and str(root) != "" else default_demo_dir()
    unknown = set(generate_kwargs) - {"num_cases", "slices_per_case", "image_size", "seed"}
    if unknown:
        raise TypeError(f"ensure_demo_dataset() got unexpected arguments: {', '.join(sorted(unknown))}")
    options = {"num_cases": DEFAULT_NUM_CASES, "slices_per_case": 16, "image_size": 256, "seed": 0, **generate_kwargs}
    wanted = _demo_parameters(**options)

    existing = _read_marker(root)
    if existing == wanted:
        return root.resolve()
    if root.exists() and existing is None and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(
            f"demo dataset folder '{root}' exists and is not a monai_vqbrain demo dataset (no {DEMO_MARKER}); "
            f"refusing to write into it. Remove it, or choose another folder via {DEMO_DIR_ENV}"
        )

    _logger.info("generating the demo dataset (slices of deformed MNI152-atlas brains) in %s", root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    stale = None
    try:
        generate_demo_dataset(staging, **options)
        if existing is not None:
            # our own dataset with other parameters: move it aside, then delete it once the new one is in place
            stale = root.with_name(f".{root.name}.stale-{uuid.uuid4().hex}")
            try:
                os.rename(root, stale)
            except FileNotFoundError:  # another process moved it first
                stale = None
        elif root.is_dir():
            try:
                root.rmdir()  # an empty folder: renaming onto it is not portable
            except OSError:
                pass  # another process filled it meanwhile; the rename below finds out
        try:
            os.rename(staging, root)
        except OSError as err:
            if _read_marker(root) != wanted:
                raise DatasetError(f"could not move the generated demo dataset into '{root}': {err}") from err
            # another process installed the same dataset first: keep theirs
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return root.resolve()
