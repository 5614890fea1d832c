"""The brain template the demo data is drawn from, and the subject-specific deformations applied to it.

The template is the MNI ICBM 152 non-linear symmetric 2009a atlas (1 mm, skull-stripped T1 and grey/white matter
probability maps) that ships inside the ``nilearn`` wheel (``nilearn/datasets/data``); it is read from there with
nibabel, offline, without importing nilearn. Its licence (redistribution with the copyright notice) is quoted in
``bundle/docs/data_license.txt``.

A subject is the template under a random smooth deformation with its own contrast, bias field and noise (the model
card's "Data" section lists them). Axial slices of a subject are resampled directly from the template volumes at the
deformed positions, so only the slices written are ever computed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from monai_vqbrain.errors import DatasetError

TEMPLATE_NAME = "MNI ICBM 152 non-linear symmetric 2009a (nilearn)"
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "grey": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "white": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# OASIS mask levels of the tissue labels
SEG_LEVELS = {"background": 0, "csf": 85, "grey": 170, "white": 255}
# world coordinates (mm, MNI) of the lateral ventricles' centre: the focus of the atrophy warp
_VENTRICLE_CENTRE_MM = (0.0, -8.0, 16.0)
# the axial extent (mm, MNI) the demo slices span: from the base of the cerebellum to near the vertex
AXIAL_RANGE_MM = (-48.0, 72.0)
MIN_BRAIN_FRACTION = 0.02
"""The least share of a demo slice the brain covers: a smaller or shifted head whose vertex lies below a slice's
level would otherwise give an empty (all black) or nearly empty "brain" slice, which the models learn to copy."""
# the resolution (pixels) at which :func:`brain_covering_positions` measures the brain's cover, and its step (mm)
_COVER_PROBE_SIZE = 64
_COVER_STEP_MM = 1.0


def template_folder() -> Path:
    """The folder of the template files inside the installed ``nilearn`` package (not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the demo data is drawn from the MNI152 brain template shipped with nilearn, which is not installed: "
            "pip install nilearn"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in _TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"the nilearn installation in '{folder.parent.parent}' lacks the template file {missing[0]}")
    return folder


class BrainTemplate:
    """Tissue maps of the template on its 1 mm grid, and the sampler that draws deformed slices from them.

    Args:
        t1: the template T1 ``(X, Y, Z)`` in [0, 1] (zero outside the brain).
        grey: grey matter probability ``(X, Y, Z)`` in [0, 1].
        white: white matter probability ``(X, Y, Z)`` in [0, 1].
        affine: the voxel-to-world (mm) affine of the three volumes (axis-aligned, 1 mm).
    """

    def __init__(self, t1: np.ndarray, grey: np.ndarray, white: np.ndarray, affine: np.ndarray) -> None:
        brain = (t1 > 0).astype(np.float32)
        csf = np.clip(brain - grey - white, 0.0, 1.0)
        # channels: brain mask, CSF, grey, white, T1; torch's (D, H, W) is the volume's (z, y, x)
        stack = np.stack([brain, csf, grey, white, t1]).astype(np.float32)
        self.volumes = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 2, 1)))[None]
        self.shape_xyz = np.asarray(t1.shape, dtype=np.float64)
        self.origin = np.asarray(affine[:3, 3], dtype=np.float64)
        self.spacing = np.abs(np.diag(np.asarray(affine)[:3, :3])).astype(np.float64)

    def sample(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Trilinear samples of the maps at world points ``(..., 3)`` (mm): ``(5, ...)`` brain, CSF, grey, white, T1."""
        shape = points_mm.shape[:-1]
        # world mm -> the [-1, 1] grid coordinates of grid_sample (corner voxel centres at -1 and 1)
        scale = torch.as_tensor(2.0 / (self.spacing * (self.shape_xyz - 1.0)), dtype=torch.float32)
        start = torch.as_tensor(-self.origin, dtype=torch.float32) * scale - 1.0
        grid = points_mm.reshape(1, 1, 1, -1, 3) * scale + start
        values = F.grid_sample(self.volumes, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return values.reshape(self.volumes.shape[1], *shape)


@functools.lru_cache(maxsize=1)
def load_brain_template() -> BrainTemplate:
    """Read the template once per process (about a second)."""
    import nibabel as nib

    folder = template_folder()
    volumes, affine = {}, None
    for key, name in _TEMPLATE_FILES.items():
        path = folder / name
        try:
            image = nib.load(path)
            volumes[key] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        except Exception as err:  # nibabel raises many types for a damaged file: name the file, once
            raise DatasetError(f"cannot read the brain template '{path}' ({err}); reinstall nilearn") from err
        affine = image.affine
    shapes = {volume.shape for volume in volumes.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise DatasetError(
            f"the brain template files in '{folder}' are not three volumes of one shape: {sorted(shapes)}"
        )
    return BrainTemplate(volumes["t1"], volumes["grey"], volumes["white"], affine)


def _fourier_modes(
    rng: np.random.Generator, count: int, wavelengths: tuple[float, float], amplitude: float, components: int = 3
) -> dict:
    """A random smooth field of ``components`` values: ``count`` plane waves each, wavelengths in mm."""
    directions = rng.normal(size=(components, count, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    lengths = rng.uniform(*wavelengths, size=(components, count, 1))
    return {
        "k": (2 * np.pi * directions / lengths).astype(np.float32),
        "phase": rng.uniform(0, 2 * np.pi, size=(components, count)).astype(np.float32),
        "amp": (rng.normal(0.0, amplitude / math.sqrt(count / 2), size=(components, count))).astype(np.float32),
    }


def _fourier_field(modes: dict, points: torch.Tensor) -> torch.Tensor:
    """The values ``(..., components)`` of a field of :func:`_fourier_modes` at points ``(..., 3)`` (mm)."""
    k, phase, amp = (torch.from_numpy(modes[key]) for key in ("k", "phase", "amp"))
    flat = points.reshape(-1, 3)
    # (components, waves, points)
    waves = torch.sin(torch.einsum("acd,nd->acn", k, flat) + phase[..., None])
    return (amp[..., None] * waves).sum(dim=1).T.reshape(*points.shape[:-1], k.shape[0])


def draw_subject(rng: np.random.Generator) -> dict:
    """Draw the anatomy and contrast of one subject."""
    atrophy = float(rng.beta(1.6, 2.8))
    yaw, pitch, roll = rng.normal(0.0, [0.06, 0.05, 0.03])
    return {
        # head size and proportions (per axis), a small tilt, and where the brain sits in the frame
        "scale": rng.normal(1.0, 0.05) * rng.normal(1.0, 0.035, size=3),
        "rotation": (float(yaw), float(pitch), float(roll)),
        "shift_mm": rng.normal(0.0, [2.0, 3.0, 2.5]),
        "coarse": _fourier_modes(rng, 6, (90.0, 220.0), 4.0),
        "fine": _fourier_modes(rng, 10, (18.0, 40.0), 1.1),
        "atrophy": atrophy,
        "ventricle_growth": 0.10 + 0.45 * atrophy + rng.normal(0.0, 0.05),
        # tissue boundaries sharper than the averaged atlas; wider CSF spaces with atrophy
        "sharpness": rng.uniform(2.0, 3.0),
        "csf_bias": 0.3 + 1.6 * atrophy,
        "csf": rng.uniform(0.13, 0.20),
        "grey": rng.uniform(0.45, 0.53),
        "white": rng.uniform(0.76, 0.84),
        "template_weight": rng.uniform(0.25, 0.4),
        "bias": rng.normal(0.0, 0.05, size=5),
        "texture": _fourier_modes(rng, 8, (6.0, 14.0), 0.015, components=1),
        "noise": rng.uniform(0.008, 0.02),
    }


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz = math.cos(yaw), math.sin(yaw)
    cx, sx = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(roll), math.sin(roll)
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return about_z @ about_x @ about_y


def render_subject(
    template: BrainTemplate,
    subject: dict,
    positions: np.ndarray,
    image_size: int,
    field_of_view_mm: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Render axial slices of one drawn subject.

    Args:
        template: the tissue maps.
        subject: the anatomy of :func:`draw_subject`.
        positions: axial positions of the slices, 0 (lowest level of ``AXIAL_RANGE_MM``) to 1 (highest).
        image_size: the side of the square slices in pixels.
        field_of_view_mm: the side of the square field of view in mm (about 1.2x the brain's length).
        rng: the noise source.

    Returns:
        ``(images, labels)``: float32 ``(n, S, S)`` intensities in [0, 1] (background exactly 0) and uint8
        ``(n, S, S)`` tissue labels in the OASIS mask levels. Rows run anterior (top) to posterior, columns from the
        subject's right to left (radiological view).
    """
    size = int(image_size)
    pixel = field_of_view_mm / size
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel - field_of_view_mm / 2
    low, high = AXIAL_RANGE_MM
    z = torch.as_tensor(low + np.asarray(positions, dtype=np.float32) * (high - low), dtype=torch.float32)
    # subject space: x right-to-left columns are -x in RAS (radiological), rows top = anterior = +y
    zs, ys, xs = torch.meshgrid(z, -centres, -centres, indexing="ij")
    points = torch.stack([xs, ys, zs], dim=-1)

    # subject space -> template space: the smooth warps, then the inverse of the head's size, tilt and position.
    # The warps are smooth over many pixels: evaluated on a 4x coarser grid and interpolated, they cost 1/16.
    coarse = F.avg_pool2d(points.permute(0, 3, 1, 2), 4) if size >= 64 else points.permute(0, 3, 1, 2)
    coarse = coarse.permute(0, 2, 3, 1)
    shift = _fourier_field(subject["coarse"], coarse) + _fourier_field(subject["fine"], coarse)
    if shift.shape[1] != size:
        shift = F.interpolate(shift.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
        shift = shift.permute(0, 2, 3, 1)
    warped = points + shift
    centre = torch.tensor(_VENTRICLE_CENTRE_MM, dtype=torch.float32)
    offset = warped - centre
    # ventricles enlarged by atrophy: sample closer to their centre, falling off over ~25 mm
    radius2 = (offset * torch.tensor([1.6, 0.8, 1.2])).pow(2).sum(-1, keepdim=True)
    warped = centre + offset * (1.0 - subject["ventricle_growth"] * torch.exp(-radius2 / (2 * 22.0**2)))
    linear = np.linalg.inv(_rotation(*subject["rotation"]) * np.asarray(subject["scale"])[None, :]).T
    shift_mm = torch.as_tensor(subject["shift_mm"], dtype=torch.float32)
    warped = (warped - shift_mm) @ torch.as_tensor(linear, dtype=torch.float32)
    brain, csf, grey, white, t1 = template.sample(warped)

    # tissue classes sharpened (the atlas is an average of many brains, blurrier than any one of them)
    logits = torch.stack([csf, grey, white]).clamp_min(1e-4).log() * subject["sharpness"]
    logits[0] += subject["csf_bias"]
    probabilities = torch.softmax(logits, dim=0)
    levels = torch.tensor([subject["csf"], subject["grey"], subject["white"]])[:, None, None, None]
    tissue = (probabilities * levels).sum(0)
    # keep some of the template's own contrast (deep nuclei, tracts), at this subject's white-matter level
    tissue = (1 - subject["template_weight"]) * tissue + subject["template_weight"] * t1 / 0.9 * subject["white"]

    b = subject["bias"]
    u, v, w = points[..., 0] / 90.0, points[..., 1] / 110.0, points[..., 2] / 80.0
    bias = torch.exp(b[0] * u + b[1] * v + b[2] * w + b[3] * u * v + b[4] * (v * v - 0.3))
    texture = 1.0 + _fourier_field(subject["texture"], points)[..., 0]
    noise = torch.from_numpy(rng.normal(0.0, subject["noise"], size=tuple(brain.shape)).astype(np.float32))
    inside = brain.clamp(0, 1)
    images = (inside * (tissue * bias * texture + noise)).clamp(0, 1)
    images[inside < 0.35] = 0.0  # skull-stripped and masked: the background is exactly zero

    mask_levels = torch.tensor([SEG_LEVELS[name] for name in ("csf", "grey", "white")], dtype=torch.uint8)
    labels = torch.where(inside >= 0.5, mask_levels[probabilities.argmax(0)], SEG_LEVELS["background"])
    return images.numpy().astype(np.float32), labels.numpy()


def brain_covering_positions(
    template: BrainTemplate,
    subject: dict,
    positions: np.ndarray,
    field_of_view_mm: float,
    min_fraction: float = MIN_BRAIN_FRACTION,
) -> np.ndarray:
    """The slice positions of a subject, each moved down (1 mm steps) until the brain covers ``min_fraction``.

    Near the vertex a subject's brain may end below the top slice's level (a small or low head): that slice would be
    empty. Only such slices move, so a subject whose slices all cover enough brain keeps its positions exactly; the
    cover is measured on a coarse render with its own noise source, so the subject's own noise draws are unchanged.

    Args:
        template: the tissue maps.
        subject: the anatomy of :func:`draw_subject`.
        positions: axial positions as :func:`render_subject` takes them, 0 (lowest) to 1 (highest).
        field_of_view_mm: the side of the square field of view in mm.
        min_fraction: the least share of the slice's pixels inside the brain.

    Returns:
        The positions (float32), each at most the one given.
    """
    low, high = AXIAL_RANGE_MM
    step = _COVER_STEP_MM / (high - low)
    moved = np.asarray(positions, dtype=np.float32).copy()
    for _ in range(int((high - low) / _COVER_STEP_MM)):
        images, _ = render_subject(
            template, subject, moved, _COVER_PROBE_SIZE, field_of_view_mm, np.random.default_rng(0)
        )
        short = (images > 0).mean(axis=(1, 2)) < min_fraction
        if not short.any():
            break
        moved[short] -= step
    return moved
