"""Built-in demo data: synthetic skull-stripped axial T1 brain slices in the OASIS PNG layout, made locally.

Each case is a coherent stack of axial slices of a procedurally drawn brain: an egg-shaped outline, a folded
cortical ribbon with CSF-filled sulci, the interhemispheric and Sylvian fissures, lateral ventricles, deep grey
nuclei, a smooth bias field and mild noise. Anatomy varies per case (size, shape, rotation, folding, atrophy,
contrast) and smoothly from slice to slice. The output mirrors ``keras_png_slices_data`` exactly, including the
segmentation masks (0 background, 85 CSF, 170 grey matter, 255 white matter), so the demo exercises the same code
path as the real data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from monai_vqbrain.data.oasis import PNG_FOLDER_PREFIX, SPLITS
from monai_vqbrain.errors import DatasetError
from monai_vqbrain.utils.io import atomic_write_text

__all__ = [
    "DEMO_DIR_ENV",
    "DEMO_MARKER",
    "default_demo_dir",
    "generate_demo_dataset",
    "ensure_demo_dataset",
]

DEMO_DIR_ENV = "MONAI_VQBRAIN_DEMO_DIR"
"""Environment variable that overrides the default demo folder."""

DEMO_MARKER = ".monai_vqbrain_demo.json"
"""File written last into a finished demo dataset; it records the parameters the dataset was made with."""

DEFAULT_NUM_CASES = (96, 8, 8)
"""Cases in the (train, validate, test) splits of the default demo set: 1536 / 128 / 128 slices, 16 per case."""

# bump when the images change, so that cached demo datasets of an older generator are regenerated
_GENERATOR_VERSION = 1
_SEG_LEVELS = {"background": 0, "csf": 85, "grey": 170, "white": 255}
_logger = logging.getLogger(__name__)


def default_demo_dir() -> Path:
    """The demo dataset folder: ``$MONAI_VQBRAIN_DEMO_DIR`` if set, else ``~/.cache/monai_vqbrain/demo_oasis``."""
    override = os.environ.get(DEMO_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "monai_vqbrain" / "demo_oasis"


# ----------------------------------------------------------------------------------------------------------------
# anatomy


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x|
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _smoothstep(x: np.ndarray | float, start: float, stop: float) -> np.ndarray:
    """0 below ``start``, 1 above ``stop``, smooth in between (``start > stop`` gives the falling edge)."""
    t = np.clip((np.asarray(x, dtype=np.float32) - start) / (stop - start), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _segment_distance(
    x: np.ndarray, y: np.ndarray, start: tuple[float, float], stop: tuple[float, float]
) -> np.ndarray:
    """Distance from the points (x, y) to the line segment from ``start`` to ``stop``."""
    (x0, y0), (x1, y1) = start, stop
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(x - x0 - t * dx, y - y0 - t * dy)


def _ellipse(x: np.ndarray, y: np.ndarray, centre: tuple, radii: tuple, edge: float) -> np.ndarray:
    """Soft membership (0..1) of an axis-aligned ellipse, with an edge about ``edge`` wide."""
    r = np.hypot((x - centre[0]) / radii[0], (y - centre[1]) / radii[1])
    return _sigmoid((1.0 - r) * min(radii) / edge)


class _AngularHarmonics:
    """Evaluates sums of ``amp * cos(j * angle + phase)`` fast, from powers of ``exp(i * angle)``.

    Trigonometric functions dominate the cost of rendering; the powers of one complex exponential are computed
    once by multiplication and shared by all the harmonic series of a slice stack.
    """

    def __init__(self, angle: np.ndarray) -> None:
        self._powers = {1: np.exp(1j * angle.astype(np.float32)).astype(np.complex64)}

    def power(self, j: int) -> np.ndarray:
        """``exp(i * j * angle)``."""
        if j not in self._powers:
            half = self.power(j // 2)
            self._powers[j] = half * half if j % 2 == 0 else half * half * self._powers[1]
        return self._powers[j]

    def cos(self, j: int, phase: np.ndarray | float = 0.0) -> np.ndarray:
        """``cos(j * angle + phase)``; ``phase`` may vary by slice."""
        power = self.power(j)
        phase = np.asarray(phase, dtype=np.float32)
        return power.real * np.cos(phase) - power.imag * np.sin(phase)

    def series(self, terms) -> np.ndarray:
        """``sum(amp * cos(j * angle + phase))`` over ``(j, amp, phase)`` terms."""
        return sum(amp * self.cos(j, phase) for j, amp, phase in terms)


def _sulcus_distance(
    phase: np.ndarray,
    offset: float,
    depths: np.ndarray,
    gyri: int,
    centre_distance: np.ndarray,
    depth: np.ndarray,
    depth_scale: np.ndarray,
) -> np.ndarray:
    """Distance to the nearest sulcus of a family: sulci run inward from the surface where the gyral phase equals
    ``offset`` modulo 2 pi, each as deep as its entry of ``depths`` (a fraction of ``depth_scale``; 0: no sulcus)."""
    shifted = (phase - offset) / (2 * np.pi)
    below = np.floor(shifted)
    nearest = None
    # the two sulci either side of each point: taking the nearer avoids seams where the sulcus depth changes
    for index in (below, below + 1.0):
        # distance along the circumference to the sulcus line
        arc = np.abs(shifted - index) * (2 * np.pi / gyri) * centre_distance
        # the phase grows by 2 pi * gyri around the circle, so index modulo gyri names each sulcus once
        fraction = depths[index.astype(np.int64) % gyri]
        distance = np.where(fraction > 0, np.hypot(arc, np.clip(depth - depth_scale * fraction, 0, None)), np.inf)
        nearest = distance if nearest is None else np.minimum(nearest, distance)
    return nearest.astype(np.float32)


def _single_precision(value):
    """``value`` with float arrays as float32 and numpy float scalars as Python floats, recursively.

    Python floats combine with float32 arrays as float32, whereas a float64 scalar or array would promote every
    image-sized intermediate to float64 and double the rendering time.
    """
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype.kind == "f" else value
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_single_precision(v) for v in value)
    return value


def _draw_case(rng: np.random.Generator) -> dict:
    """Draw the anatomy and contrast of one subject."""
    return {key: _single_precision(value) for key, value in _draw_parameters(rng).items()}


def _draw_parameters(rng: np.random.Generator) -> dict:
    atrophy = float(rng.beta(1.6, 2.4))
    half_width = rng.uniform(0.62, 0.70)
    return {
        "rotation": rng.uniform(-0.10, 0.10),
        "shift": rng.uniform(-0.03, 0.03, size=2),
        "half_width": half_width,
        "half_length": min(half_width * rng.uniform(1.18, 1.30), 0.90),
        "egg": rng.uniform(-0.07, 0.07),
        "z_offset": rng.uniform(-0.04, 0.04),
        # low harmonics of the outline: overall shape and left/right asymmetry
        "outline": [
            (k, rng.normal(0, 0.018 / k**0.5), rng.uniform(0, 2 * np.pi), rng.normal(0, 1.0)) for k in (1, 2, 3, 4, 5)
        ],
        # cortical folding: gyri around the circumference with a locally varying spacing
        "gyri": int(rng.integers(24, 32)),
        "spacing": [(j, rng.normal(0, 0.13), rng.uniform(0, 2 * np.pi), rng.uniform(-2.5, 2.5)) for j in range(1, 11)],
        # sulci bend and wiggle as they deepen, each a little differently
        "tilt": [
            (j, rng.normal(0, sd), rng.uniform(0, 2 * np.pi))
            for j, sd in ((1, 1.5), (2, 1.5), (3, 1.2), (5, 1.0), (8, 0.8))
        ],
        "wiggle": (rng.uniform(0.5, 0.9), int(rng.integers(11, 17)), rng.uniform(0, 2 * np.pi)),
        "sulcus_depths": rng.uniform(0.45, 1.0, size=64),
        # shallower side branches between the main sulci, present in about half the gyri
        "branch_depths": np.where(rng.random(64) < 0.5, rng.uniform(0.25, 0.6, size=64), 0.0),
        "fold_depth": rng.uniform(0.24, 0.32) * (1.0 - 0.15 * atrophy),
        "cortex": rng.uniform(0.030, 0.038),
        "thickness": [(j, rng.normal(0, 0.12), rng.uniform(0, 2 * np.pi)) for j in (3, 5, 7, 11)],
        "atrophy": atrophy,
        "ventricle_scale": (0.65 + 1.1 * atrophy) * rng.uniform(0.85, 1.15),
        "ventricle_asymmetry": rng.uniform(-0.12, 0.12),
        "ventricle_position": rng.uniform(-0.03, 0.06),
        # T1 contrast: CSF dark, grey matter mid, white matter bright
        "csf": rng.uniform(0.15, 0.21),
        "grey": rng.uniform(0.47, 0.53),
        "white": rng.uniform(0.77, 0.83),
        "bias": rng.normal(0, 0.045, size=6),
        # faint tissue texture: a few plane waves, tens of pixels long, drifting through the stack
        "texture": [
            (rng.normal(0, 0.012), *rng.uniform(-9.0, 9.0, size=2), rng.uniform(-4.0, 4.0), rng.uniform(0, 2 * np.pi))
            for _ in range(6)
        ],
        "noise": rng.uniform(0.010, 0.022),
    }


def _render_case(
    case: dict, positions: np.ndarray, image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render axial slices of one drawn subject.

    Args:
        case: the anatomy of :func:`_draw_case`.
        positions: axial positions of the slices, -1 (base of the cerebrum) to 1 (vertex).
        image_size: the side of the square slices in pixels.
        rng: the noise source.

    Returns:
        ``(images, labels)``: float32 ``(n, S, S)`` intensities in [0, 1] (background exactly 0) and uint8
        ``(n, S, S)`` tissue labels in the OASIS mask levels.
    """
    size = int(image_size)
    pixel = 2.0 / size
    edge = 0.45 * pixel  # width of the soft tissue boundaries: partial-volume blur of about one pixel
    centres = ((np.arange(size, dtype=np.float32) + 0.5) * pixel - 1.0).astype(np.float32)
    z = (np.asarray(positions, dtype=np.float32) + case["z_offset"])[:, None, None]
    ys, xs = centres[None, :, None], centres[None, None, :]

    # brain-centred frame: x to the patient's right, y posterior (image rows run anterior to posterior)
    cos_r, sin_r = math.cos(case["rotation"]), math.sin(case["rotation"])  # Python floats keep float32 arrays
    x = cos_r * (xs - case["shift"][0]) + sin_r * (ys - case["shift"][1])
    y = -sin_r * (xs - case["shift"][0]) + cos_r * (ys - case["shift"][1])

    # the cross-section shrinks toward the base and, faster, toward the vertex
    profile = np.clip(1.0 - np.abs((z + 0.12) / 1.02) ** 2.3, 0.02, 1.0) ** (1 / 2.3)
    half_a = case["half_width"] * profile * (1.0 + case["egg"] * y / case["half_length"])
    half_b = case["half_length"] * profile**0.85
    xn, yn = x / half_a, y / half_b
    radius = np.hypot(xn, yn)
    angle = np.arctan2(yn, xn)
    harmonics = _AngularHarmonics(angle)
    outline = 1.0 + harmonics.series((k, amp, ph + drift * z) for k, amp, ph, drift in case["outline"])
    # depth below the outer surface in image units (1 = half the image), measured along the ray from the centre
    ray_scale = np.hypot(half_a * harmonics.power(1).real, half_b * harmonics.power(1).imag)
    depth = (outline - radius) * ray_scale
    inside = _sigmoid(depth / edge)

    # cortical folding: sulci sit where the gyral phase is a multiple of 2 pi; their spacing, depth and tilt vary
    fold_depth = case["fold_depth"]
    gyri = case["gyri"]
    phase = gyri * angle + harmonics.series(
        (j, gyri * amp / j, ph + drift * z - np.pi / 2) for j, amp, ph, drift in case["spacing"]
    )
    bend = harmonics.series(case["tilt"])
    relative_depth = np.clip(depth, 0, None) / fold_depth
    wiggle_amp, wiggle_freq, wiggle_phase = case["wiggle"]
    wiggle = wiggle_amp * np.sin(3 * np.pi * relative_depth + wiggle_freq * angle + wiggle_phase + 3.0 * z)
    phase = phase + bend * relative_depth + wiggle * np.clip(relative_depth, 0, 1)
    # sulci reach at most part way to the centre, so that where the cross-section is small they do not meet there
    depth_scale = np.minimum(fold_depth * (0.85 + 0.15 * harmonics.cos(2, 2.0 * z)), 0.5 * outline * ray_scale)
    centre_distance = radius * ray_scale
    sulcus_dist = np.minimum(
        _sulcus_distance(phase, 0.0, case["sulcus_depths"], gyri, centre_distance, depth, depth_scale),
        _sulcus_distance(phase, np.pi, case["branch_depths"], gyri, centre_distance, depth, depth_scale),
    )
    # sulci open up toward the surface
    sulcus_width = (0.35 * pixel + 0.003 + 0.007 * case["atrophy"]) * (1.0 + _smoothstep(depth, 0.3 * fold_depth, 0.0))

    # interhemispheric fissure: from both poles toward the centre, along the whole midline near the vertex
    front_reach = 0.55 + 0.6 * _smoothstep(z, 0.28, 0.42)
    back_reach = 0.45 + 0.7 * _smoothstep(z, 0.28, 0.42)
    front_end = -half_b * (1.0 - front_reach)
    back_end = half_b * (1.0 - back_reach)
    fissure_dist = np.minimum(np.hypot(x, np.clip(y - front_end, 0, None)), np.hypot(x, np.clip(back_end - y, 0, None)))
    fissure_width = 0.35 * pixel + 0.003 + 0.004 * case["atrophy"]

    # Sylvian fissures: deep lateral clefts over the insula in the lower half of the stack
    sylvian = _smoothstep(z, -0.70, -0.50) * _smoothstep(z, 0.15, -0.05)
    sylvian_dist = np.full(np.broadcast_shapes(x.shape, z.shape), np.inf, dtype=np.float32)
    for side in (-1.0, 1.0):
        start = (side * case["half_width"] * 1.05, -0.02)
        stop = (side * case["half_width"] * 0.55, -0.20 * case["half_length"])
        sylvian_dist = np.minimum(sylvian_dist, _segment_distance(x, y, start, stop))
    sylvian_dist = np.where(sylvian > 0.05, sylvian_dist, np.inf)
    sylvian_width = (0.35 * pixel + 0.004 + 0.008 * case["atrophy"]) * sylvian

    surface_csf = np.maximum.reduce(
        [
            _sigmoid((sulcus_width - sulcus_dist) / edge),
            _sigmoid((fissure_width - fissure_dist) / edge),
            _sigmoid((sylvian_width - sylvian_dist) / edge),
        ]
    )
    # grey matter lines every CSF surface with a ribbon of varying thickness; white matter lies beneath
    to_csf = np.minimum.reduce(
        [depth, sulcus_dist - sulcus_width, fissure_dist - fissure_width, sylvian_dist - sylvian_width]
    )
    # (the angular variation fades toward the centre, where angles crowd together, e.g. along the fissure)
    cortex = case["cortex"] * (1.0 + harmonics.series(case["thickness"]) * np.clip(2.0 * radius - 0.6, 0.0, 1.0))
    white = _sigmoid((to_csf - cortex) / edge)

    ventricles, third = _ventricles(case, x, y, z, edge)
    deep_grey = _deep_grey(case, x, y, z, edge)

    grey_level, white_level, csf_level = case["grey"], case["white"], case["csf"]
    tissue = grey_level + (white_level - grey_level) * white
    deep_level = grey_level + 0.07
    tissue = tissue + (deep_level - tissue) * deep_grey
    csf = np.maximum.reduce([surface_csf, ventricles, third])
    tissue = tissue + (csf_level - tissue) * csf

    # smooth multiplicative bias field, as left by an imperfect intensity correction
    c = case["bias"]
    bias = np.exp(c[0] * xs + c[1] * ys + c[2] * z + c[3] * xs * ys + c[4] * (xs**2 - 0.33) + c[5] * (ys**2 - 0.33))
    # cos(kx x + ky y + phase) split into products of 1D factors: a full 3D cosine per wave would cost more
    texture = 1.0
    for amp, kx, ky, drift, ph in case["texture"]:
        texture = texture + amp * (
            np.cos(kx * xs) * np.cos(ky * ys + drift * z + ph) - np.sin(kx * xs) * np.sin(ky * ys + drift * z + ph)
        )
    tissue = tissue * texture
    noise = rng.normal(0.0, case["noise"], size=np.broadcast_shapes(inside.shape, z.shape)).astype(np.float32)
    # skull-stripped and masked: the background is exactly zero, noise only inside the brain
    images = np.clip(inside * (tissue * bias + noise), 0.0, 1.0)
    images[inside < 0.02] = 0.0

    labels = np.full(images.shape, _SEG_LEVELS["background"], dtype=np.uint8)
    brain = inside >= 0.5
    labels[brain] = _SEG_LEVELS["grey"]
    labels[brain & (white >= 0.5) & (deep_grey < 0.5)] = _SEG_LEVELS["white"]
    labels[brain & (csf >= 0.5)] = _SEG_LEVELS["csf"]
    return images.astype(np.float32), labels


def _ventricles(case: dict, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of the lateral ventricles and of the third ventricle.

    The lateral ventricles are a mirrored pair of crescents, close to the midline in the middle and diverging
    toward the frontal horns and the atria (the butterfly of axial slices). Low in the stack only the frontal
    horns and the atria show, high in the stack the continuous bodies, and above and below them nothing.
    """
    scale = case["ventricle_scale"]
    presence = _smoothstep(z, -0.42, -0.28) * _smoothstep(z, 0.34, 0.20)
    # t runs from -1 (tip of the frontal horn) to 1 (end of the atrium); the pair is longest mid-range
    lengths = case["half_length"] * (0.30 + 0.12 * presence) * (0.9 + 0.1 * scale)
    centre_y = case["ventricle_position"] + 0.04 * (z - 0.05)
    t = (y - centre_y) / lengths
    side_scale = 1.0 + case["ventricle_asymmetry"] * np.sign(x)
    # ")(" low in the stack, where frontal horns and atria diverge; near-parallel bodies higher up
    spread = (-0.015 + 0.15 * _smoothstep(z, 0.35, -0.15)) * (0.85 + 0.15 * scale)
    centre_x = np.maximum(0.018 + 0.008 * scale + spread * t**2, 0.012)
    # horns and atria are wider than the body; the atrium is the widest part
    profile = np.sqrt(np.clip(1.0 - t**2, 0.0, None)) * (1.0 + 0.35 * _smoothstep(t, 0.2, 0.8))
    width = 0.026 * scale * side_scale * profile * np.sqrt(presence)
    lateral = _sigmoid((width - np.abs(np.abs(x) - centre_x)) / edge) * (width > 0.25 * edge)
    gap = _smoothstep(z, -0.02, -0.18)
    # low in the stack the thalami separate the frontal horns from the atria
    lateral = lateral * (1.0 - gap * _smoothstep(np.abs(t - 0.15), 0.50, 0.40))

    third_presence = _smoothstep(z, -0.50, -0.38) * _smoothstep(z, 0.02, -0.10)
    third_width = (0.006 + 0.006 * scale) * third_presence
    third = _sigmoid((third_width - np.abs(x)) / edge) * _smoothstep(y, -0.08, -0.06) * _smoothstep(y, 0.16, 0.14)
    third = third * (third_presence > 0.05)
    return lateral.astype(np.float32), third.astype(np.float32)


def _deep_grey(case: dict, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float) -> np.ndarray:
    """Soft mask of the deep grey nuclei: caudate heads, thalami and lentiform nuclei, each at its own levels."""
    scale = case["half_width"] / 0.6
    ax = np.abs(x) / scale  # mirror-symmetric structures, sized with the brain
    yy = (y - case["ventricle_position"]) / scale
    caudate = _ellipse(ax, yy, (0.105, -0.20), (0.040, 0.070), edge) * _smoothstep(z, -0.30, -0.15)
    caudate = caudate * _smoothstep(z, 0.35, 0.22)
    thalamus = _ellipse(ax, yy, (0.075, 0.07), (0.065, 0.10), edge) * _smoothstep(z, -0.45, -0.35)
    thalamus = thalamus * _smoothstep(z, 0.02, -0.08)
    lentiform = _ellipse(ax, yy + 0.25 * (ax - 0.24), (0.235, -0.04), (0.045, 0.12), edge)
    lentiform = lentiform * _smoothstep(z, -0.50, -0.38) * _smoothstep(z, 0.08, -0.04)
    return np.maximum.reduce([caudate, thalamus, lentiform]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# dataset files


def _check_generate_args(num_cases: Sequence[int], slices_per_case: int, image_size: int) -> tuple[int, ...]:
    """Validate the arguments of :func:`generate_demo_dataset`, returning the case counts as ints."""
    try:
        counts = tuple(int(n) for n in num_cases)
    except TypeError as err:
        raise ValueError(f"num_cases must be three counts (train, validate, test), got {num_cases!r}") from err
    if len(counts) != len(SPLITS) or min(counts) < 1:
        raise ValueError(f"num_cases must be three positive counts (train, validate, test), got {num_cases!r}")
    if int(slices_per_case) < 1:
        raise ValueError(f"slices_per_case must be positive, got {slices_per_case!r}")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size!r}")
    return counts


def _demo_parameters(num_cases: Sequence[int], slices_per_case: int, image_size: int, seed: int) -> dict:
    """The parameters a demo dataset is identified by, as stored in its marker file."""
    return {
        "generator": "monai_vqbrain.data.demo",
        "version": _GENERATOR_VERSION,
        "num_cases": [int(n) for n in num_cases],
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
    depends only on ``seed`` and its number. Files are named ``case_XXX_slice_Y.nii.png`` (masks
    ``seg_XXX_slice_Y.nii.png``) whatever ``image_size`` is. The marker file is written last, so a folder that has
    it is complete.

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
    counts = _check_generate_args(num_cases, slices_per_case, image_size)
    root = Path(root).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"cannot write the demo dataset into '{root}': expected a missing or empty folder")
    # slices spread over the part of the cerebrum OASIS slices cover: from above the temporal poles to near the vertex
    positions = np.linspace(-0.60, 0.72, int(slices_per_case), dtype=np.float32)
    case_number = 0
    for split, count in zip(SPLITS, counts, strict=True):
        image_dir = root / f"{PNG_FOLDER_PREFIX}{split}"
        seg_dir = root / f"{PNG_FOLDER_PREFIX}seg_{split}"
        image_dir.mkdir(parents=True, exist_ok=True)
        seg_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            case_number += 1
            rng = np.random.default_rng([int(seed), case_number])
            images, labels = _render_case(_draw_case(rng), positions, int(image_size), rng)
            pixels = np.rint(images * 255.0).astype(np.uint8)
            for index in range(len(positions)):
                Image.fromarray(pixels[index]).save(image_dir / f"case_{case_number:03d}_slice_{index}.nii.png")
                Image.fromarray(labels[index]).save(seg_dir / f"seg_{case_number:03d}_slice_{index}.nii.png")
    parameters = _demo_parameters(counts, slices_per_case, image_size, seed)
    atomic_write_text(root / DEMO_MARKER, json.dumps(parameters, indent=2) + "\n")
    return root.resolve()


def _read_marker(root: Path) -> dict | None:
    """The parameters recorded in a demo dataset's marker file, or None when there is no readable marker."""
    try:
        return json.loads((root / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_demo_dataset(root: str | os.PathLike | None = None, **generate_kwargs) -> Path:
    """Return a demo dataset folder, generating it on first use and reusing it afterwards.

    The dataset is generated into a temporary sibling folder and renamed into place in one step, so a reader never
    sees a partial dataset and two processes racing to create it both end up with one complete copy (the loser
    discards its own). A demo dataset made with other parameters (or by an older generator) is replaced; any other
    non-empty folder is left alone.

    Args:
        root: the dataset folder; :func:`default_demo_dir` when None.
        generate_kwargs: ``num_cases``, ``slices_per_case``, ``image_size`` and ``seed`` of
            :func:`generate_demo_dataset`.

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
    _check_generate_args(options["num_cases"], options["slices_per_case"], options["image_size"])
    wanted = _demo_parameters(**options)

    existing = _read_marker(root)
    if existing == wanted:
        return root.resolve()
    if root.exists() and existing is None and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(
            f"demo dataset folder '{root}' exists and is not a monai_vqbrain demo dataset (no {DEMO_MARKER}); "
            f"refusing to write into it. Remove it, or choose another folder via {DEMO_DIR_ENV}"
        )

    _logger.info("generating the demo dataset (synthetic brain MRI slices) in %s", root)
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
