"""Shared test fixtures: tiny datasets in the real layouts the package reads.

The fixtures are session-scoped and shared by many tests: treat them as read-only (copy one with
``shutil.copytree`` before changing it).
"""

from __future__ import annotations

import csv
import shutil
import struct
import threading
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_vqbrain.data import generate_demo_dataset
from monai_vqbrain.inference import METRICS_FILE
from monai_vqbrain.networks import VQVAE
from monai_vqbrain.prior import load_vqvae
from monai_vqbrain.utils import load_network_weights

# cases and slice indices of the tiny OASIS PNG dataset; slice 10 checks that slices sort numerically
PNG_CASES = {"train": (1, 2, 3), "validate": (4, 5), "test": (6, 7)}
PNG_SLICES = {"train": (0, 1, 2, 10), "validate": (0, 1), "test": (0, 1)}
PNG_SIZE = 32
RGB_FILE = "case_003_slice_1.nii.png"
"""The one train slice stored as RGB, as in some copies of the OASIS PNG set."""

VOLUME_SHAPE = (24, 28, 20)
NIFTI_AFFINE = np.array([[-1.1, 0.0, 0.0, 12.0], [0.0, 1.0, 0.0, -14.0], [0.0, 0.0, 1.2, -9.0], [0.0, 0.0, 0.0, 1.0]])
# relative paths of the volumes in ``nifti_root``; OAS2_0004 has two sessions, which must share a split
NIFTI_FILES = (
    "OAS1_0001_MR1/OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz",
    "OAS1_0002_MR1/OAS1_0002_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz",
    "OAS1_0003_MR1/OAS1_0003_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz",
    "OAS2_0004_MR1/OAS2_0004_MR1_T1.nii.gz",
    "OAS2_0004_MR2/OAS2_0004_MR2_T1.nii.gz",
    "sub-06_T1w.nii.gz",
)
ANALYZE_FILE = "OAS1_0005_MR1/PROCESSED/MPRAGE/T88_111/OAS1_0005_MR1_mpr_n4_anon_111_t88_masked_gfc.img"


def brain_like_slice(size: int, seed: int) -> np.ndarray:
    """A small 8-bit slice with a bright ellipse (a 'brain') on a black background, different for each seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    a, b = rng.uniform(0.5, 0.7), rng.uniform(0.6, 0.85)
    inside = (xs / a) ** 2 + (ys / b) ** 2 < 1
    image = np.where(inside, 120 + 100 * np.exp(-(xs**2 + ys**2) * 3), 0) + inside * rng.normal(0, 5, inside.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def brain_like_volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A small int16 volume: an ellipsoid of varying intensity on a zero background."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radii = rng.uniform(0.7, 0.9, size=len(shape))
    radius = np.sqrt(sum((g / r) ** 2 for g, r in zip(grids, radii, strict=True)))
    volume = np.where(radius < 1, 300 + 500 * (1 - radius) + rng.normal(0, 20, shape), 0)
    return volume.astype(np.int16)


@pytest.fixture(scope="session")
def oasis_png_root(tmp_path_factory) -> Path:
    """A tiny ``keras_png_slices_data`` folder: six folders, OASIS file names, 32x32 8-bit grey, one RGB file."""
    root = tmp_path_factory.mktemp("oasis_png") / "keras_png_slices_data"
    for split, cases in PNG_CASES.items():
        image_dir = root / f"keras_png_slices_{split}"
        seg_dir = root / f"keras_png_slices_seg_{split}"
        image_dir.mkdir(parents=True)
        seg_dir.mkdir(parents=True)
        for case in cases:
            for slice_index in PNG_SLICES[split]:
                image = brain_like_slice(PNG_SIZE, seed=case * 100 + slice_index)
                name = f"case_{case:03d}_slice_{slice_index}.nii.png"
                if name == RGB_FILE:
                    # distinct channels, so that a test can tell the mean of R, G and B from any single channel
                    rgb = np.stack([image, image // 2, np.minimum(image.astype(np.int32) + 30, 255)], axis=-1)
                    Image.fromarray(rgb.astype(np.uint8)).save(image_dir / name)
                else:
                    Image.fromarray(image).save(image_dir / name)
                seg = (np.digitize(image, [1, 140, 180]) * 85).astype(np.uint8)
                Image.fromarray(seg).save(seg_dir / f"seg_{case:03d}_slice_{slice_index}.nii.png")
    return root


@pytest.fixture(scope="session")
def nifti_root(tmp_path_factory) -> Path:
    """A folder of small OASIS-like volumes (24x28x20, non-identity affine) in sub-folders, plus one Analyze pair."""
    root = tmp_path_factory.mktemp("nifti")
    for seed, relative in enumerate(NIFTI_FILES):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(brain_like_volume(VOLUME_SHAPE, seed), NIFTI_AFFINE), str(path))
    analyze = root / ANALYZE_FILE
    analyze.parent.mkdir(parents=True)
    nib.save(nib.AnalyzeImage(brain_like_volume(VOLUME_SHAPE, 99), np.diag([1.0, 1.0, 1.0, 1.0])), str(analyze))
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset: 4/2/2 cases of 4 slices, 32x32 pixels, in the OASIS PNG layout."""
    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo") / "demo_oasis", num_cases=(4, 2, 2), slices_per_case=4, image_size=32
    )


# ---------------------------------------------------------------------------------------------------------------
# running the bundle as a user does, on tiny data and a tiny network

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.json")
TINY_NETWORK = {"channels": [8, 16], "num_res_channels": 8, "num_embeddings": 32, "embedding_dim": 8}
"""VQ-VAE settings small enough that a whole bundle run takes seconds."""
TINY_OVERRIDES = {
    "image_size": 32,
    "train_crop_size": 16,
    "batch_size": 4,
    "progress": False,
    **{f"network_def#{key}": value for key, value in TINY_NETWORK.items()},
}


def run_bundle(run_id: str, config_file, **overrides) -> None:
    """``python -m monai.bundle run <run_id>`` in-process, with the tiny settings unless overridden."""
    from monai.bundle import run

    run(run_id=run_id, config_file=config_file, logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"), **{**TINY_OVERRIDES, **overrides})


def user_error(error_type, match: str, function, *args, **kwargs) -> Exception:
    """Call ``function`` and return the ``error_type`` in the raised chain (MONAI's parser may wrap it)."""
    from monai_vqbrain.workflows import release_output_locks

    with pytest.raises(Exception) as caught:
        function(*args, **kwargs)
    # as a command-line run does when it exits: a run from Python that raised keeps its output-folder locks (and
    # their lock files) until the process ends or releases them
    release_output_locks()
    error = caught.value
    while error is not None and not isinstance(error, error_type):
        error = error.__cause__ or error.__context__
    assert error is not None, f"expected {error_type.__name__}, got {caught.value!r}"
    assert match in str(error), str(error)
    return error


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, demo_root) -> Path:
    """A bundle root holding a 2-epoch tiny VQ-VAE training run on ``demo_root``; treat it as read-only."""
    bundle_root = tmp_path_factory.mktemp("trained_bundle")
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), max_epochs=2)
    return bundle_root


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: two threads only oversubscribe a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# the prior and generating, shared by test_prior_training, test_generation and test_generation_metrics (the prior
# fixtures module-scoped, as they were in test_prior.py)
TRAIN_PRIOR = [TRAIN, str(CONFIGS / "train_prior.json")]
GENERATE = [TRAIN, str(CONFIGS / "generate.json")]
# a prior as small as the tiny VQ-VAE of conftest (32x32 images -> 8x8 codes over 32 codes)
TINY_PRIOR = {
    "prior_def#channels": 8,
    "prior_def#num_layers": 2,
    "prior_def#kernel_size": 3,
    "prior_batch_size": 4,
    "prior_slice_bins": 4,
}
NUM_SAMPLES = 4


def train_prior(bundle_root: Path, demo_root: Path, **overrides) -> None:
    run_bundle("training_prior", TRAIN_PRIOR, bundle_root=str(bundle_root), dataset_dir=str(demo_root),
               **{"prior_max_epochs": 2, **TINY_PRIOR, **overrides})


def generate(bundle_root: Path, demo_root: Path, **overrides) -> Path:
    settings = {"num_samples": NUM_SAMPLES, "generation_metrics": False, **overrides}
    run_bundle("generating", GENERATE, bundle_root=str(bundle_root), dataset_dir=str(demo_root), **settings)
    return Path(settings.get("generation_dir", bundle_root / "outputs" / "generated"))


def copy_models(source: Path, bundle_root: Path, names: tuple[str, ...] | None = None) -> Path:
    """Copy a fixture's checkpoints (all, or ``names``) into a new bundle root; return its models folder."""
    models = bundle_root / "models"
    if names is None:
        shutil.copytree(source / "models", models)
    else:
        models.mkdir(parents=True)
        for name in names:
            shutil.copy2(source / "models" / name, models / name)
    return models


@pytest.fixture(scope="module")
def prior_root(tmp_path_factory, trained_bundle, demo_root) -> Path:
    """The tiny VQ-VAE plus a prior trained for two epochs (read-only: copy it before changing it)."""
    root = tmp_path_factory.mktemp("prior_bundle")
    copy_models(trained_bundle, root, ("model.pt", "model.json"))
    train_prior(root, demo_root)
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory, prior_root, demo_root) -> Path:
    """A generating run with the quality metrics, into a copy of the prior bundle."""
    root = tmp_path_factory.mktemp("generated_bundle")
    copy_models(prior_root, root)
    return generate(root, demo_root, generation_metrics=True)


def tiny_vqvae(checkpoint: Path) -> VQVAE:
    return load_vqvae(VQVAE(**TINY_NETWORK), checkpoint, image_size=32)


# inference on the user's files, shared by test_inference and test_inference_safety (fixtures module-scoped, as
# they were in test_inference.py)
INFER = [TRAIN, str(CONFIGS / "inference.json")]
VOLUME = (24, 28, 20)
# a permutation and flips of the axes, so that the RAS reorientation is not a no-op
PERMUTED_AFFINE = np.array([[0.0, 0.0, -1.2, 10.0], [-1.0, 0.0, 0.0, 5.0], [0.0, 1.1, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]])


def infer(bundle_root: Path, inputs, output_dir: Path, **overrides) -> list[dict]:
    """Run the inferring workflow and return the rows of its metrics CSV."""
    run_bundle("inferring", INFER, bundle_root=str(bundle_root), input=inputs, output_dir=str(output_dir), **overrides)
    with open(output_dir / METRICS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = NIFTI_AFFINE) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"monai_vqbrain test volume"
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_sform(affine, code=2)
    nib.save(image, str(path))
    return path


def odd_grey(height: int = 37, width: int = 53, seed: int = 1) -> np.ndarray:
    """An 8-bit grey slice of an odd, non-square size."""
    side = max(height, width)
    return brain_like_slice(side, seed)[:height, :width].copy()


def without_direction(name: str, shape: tuple[int, ...]):
    """A NIfTI whose affine gives its third voxel axis no direction (zero slice thickness)."""

    def make(folder: Path) -> Path:
        image = nib.Nifti1Image(brain_like_volume(shape, seed=1), None)
        image.header.set_sform(np.diag([1.0, -1.0, 0.0, 1.0]), code=1)
        image.header.set_qform(None, code=0)
        nib.save(image, str(folder / name))
        return folder / name

    return make


@pytest.fixture(scope="module")
def vqvae(trained_bundle) -> VQVAE:
    network = VQVAE(**TINY_NETWORK).eval()
    load_network_weights(network, trained_bundle / "models" / "model.pt", {"image_size": 32})
    return network


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    """Good inputs of every kind, plus a corrupt PNG and a volume holding NaNs (bad files sort first)."""
    root = tmp_path_factory.mktemp("inputs")
    grey = odd_grey()
    save_png(root / "grey.png", grey)
    save_png(root / "rgb.png", np.stack([grey, grey // 2, np.minimum(grey.astype(int) + 30, 255)], -1).astype(np.uint8))
    save_png(root / "rgba.png", np.stack([grey.T, grey.T, grey.T, np.full_like(grey.T, 200)], -1))
    save_png(root / "grey16.png", (odd_grey(40, 33).astype(np.uint16) * 250))
    save_nifti(root / "slice2d.nii", brain_like_volume(VOLUME[:2], seed=4).astype(np.float32) / 7.0)
    save_nifti(root / "volume.nii.gz", brain_like_volume(VOLUME, seed=5))
    save_nifti(root / "permuted.nii.gz", brain_like_volume(VOLUME, seed=6).astype(np.uint8), PERMUTED_AFFINE)
    (root / "bad.png").write_bytes(b"this is not a png")
    nan_volume = brain_like_volume(VOLUME, seed=7).astype(np.float32)
    nan_volume[3, 4, 5] = np.nan
    save_nifti(root / "bad_nan.nii.gz", nan_volume)
    (root / "notes.txt").write_text("a folder input takes only PNG and NIfTI files")
    return root


def grey_png(path: Path, width: int, height: int) -> Path:
    """A whole 8-bit grey PNG of ``width`` x ``height`` (rows of one value each), written without PIL's size limit."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([(7 * row) % 256]) * width for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------- symbolic link cycles
def finishes(function, *args, timeout: float = 60.0):
    """Run ``function`` in a thread; return its result, or fail when it has not finished after ``timeout`` s."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = function(*args)
        except Exception as error:  # reported to the test below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{function.__name__} did not finish in {timeout} s (a symbolic link cycle?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def volume_files(tmp_path: Path) -> list[Path]:
    """Volumes of several types, orientations and scalings, some with a singleton axis."""
    rng = np.random.default_rng(0)
    files = []
    for trial in range(12):
        shape = tuple(int(s) for s in rng.integers(1, 20, size=3))
        kind = trial % 3
        if kind == 0:
            data = rng.normal(100, 50, shape).astype(np.float32)
        elif kind == 1:
            data = rng.integers(-300, 3000, shape).astype(np.int16)
            data[data < 500] = 0  # ties at the lower percentile, as in a brain's background
        else:
            data = (rng.exponential(1, shape) ** 3).astype(np.float64)
        affine = np.eye(4)
        axes = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)[:, None]
        affine[:3, :3] = axes * rng.uniform(0.5, 2, 3)[:, None]
        image = nib.Nifti1Image(data, affine)
        if trial % 4 == 0:
            image.header.set_slope_inter(0.37, 12.5)
        path = tmp_path / f"volume{trial}.nii{'.gz' if trial % 2 else ''}"
        nib.save(image, str(path))
        files.append(path)
    return files


def save_with_affine(path: Path, affine: np.ndarray) -> Path:
    """A volume whose header's sform is ``affine`` as given (nibabel would not write a NaN affine it is handed)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(brain_like_volume((24, 28, 20), 1), None, header), str(path))
    return path


BAD_AFFINES = {
    "nan": np.where(np.eye(4) > 0, np.nan, 0.0),
    "inf": np.diag([np.inf, 1.0, 1.0, 1.0]),
    "singular": np.diag([1.0, 0.0, 1.0, 1.0]),
}
