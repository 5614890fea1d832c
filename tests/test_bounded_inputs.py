"""Memory bounded by what is decoded, and no hang or traceback on hostile inputs (issue 19, part B).

Thin and tiny slices are refused from their headers; NIfTI volumes are read a slice at a time from nibabel's array
proxy with the same values as the whole-volume reader; oversized checkpoints are refused from their zip directory;
glob and listing survive symbolic-link cycles; bad affines, damaged histories and code caches, and files that vanish
mid-run are one line naming the file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    NIFTI_AFFINE,
    NIFTI_FILES,
    TINY_NETWORK,
    TRAIN,
    brain_like_slice,
    brain_like_volume,
    run_bundle,
    user_error,
)
from nifti_oracle import load_nifti_slices, read_volume_ras
from PIL import Image

from monai_vqbrain.data import PadToSquared, ResizeSquared, get_datalist, get_dataset
from monai_vqbrain.data.nifti import (
    VolumeSlices,
    open_volume_slices,
    robust_range,
    scale_to_unit,
    volume_intensity_range,
    volume_plane,
)
from monai_vqbrain.data.oasis import check_png_file
from monai_vqbrain.data.slices import read_volume_plane
from monai_vqbrain.errors import CheckpointError, ImageFileError, InputsSkippedError, find_user_error
from monai_vqbrain.handlers import HistoryFileError, TrainingCheckpointLoader, read_history
from monai_vqbrain.inference import METRICS_FILE, LoadInputd, find_input_files, read_input
from monai_vqbrain.networks import VQVAE, GatedPixelCNN
from monai_vqbrain.prior import load_or_encode_codes, load_prior
from monai_vqbrain.utils import load_network_weights, save_checkpoint

INFER = [TRAIN, str(CONFIGS / "inference.json")]
EVALUATE = [TRAIN, str(CONFIGS / "evaluate.json")]
PERMUTED_AFFINE = np.array([[0.0, 0.0, -1.2, 10.0], [-1.0, 0.0, 0.0, 5.0], [0.0, 1.1, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]])


def grey_png(path: Path, width: int, height: int) -> Path:
    """A whole 8-bit grey PNG of ``width`` x ``height`` (rows of one value each), written without PIL's size limit."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([(7 * row) % 256]) * width for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


def infer(bundle_root: Path, inputs, output_dir: Path, **overrides) -> list[dict]:
    """Run the inferring workflow and return the rows of its metrics CSV."""
    run_bundle("inferring", INFER, bundle_root=str(bundle_root), input=inputs, output_dir=str(output_dir), **overrides)
    with open(output_dir / METRICS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------ thin and tiny slices
def test_thin_png_is_refused_from_its_header_by_the_square_it_pads_to(tmp_path):
    # 16 x 9000 pixels: 144,000 pixels, far below max_image_pixels, but padded to a square of 81,000,000
    thin = grey_png(tmp_path / "thin.png", 16, 9000)
    with pytest.raises(ImageFileError, match=r"'.*thin.png' gives slices of 9000x16 pixels, padded to a square of "
                                             r"9000x9000 = 81,000,000 pixels, more than max_image_pixels=67,108,864"):
        check_png_file(thin)
    with pytest.raises(ImageFileError, match="padded to a square"):
        read_input(thin)
    check_png_file(thin, max_pixels=81_000_000)  # the setting raises the limit


def test_tiny_and_thin_pngs_are_refused_in_training_naming_the_file(tmp_path, demo_root):
    root = shutil.copytree(demo_root, tmp_path / "data")
    victim = sorted((root / "keras_png_slices_train").glob("*.png"))[0]
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(victim)
    user_error(ImageFileError, f"'{victim}' gives slices of 1x1 pixels; expected both in-plane sides to be at least 16",
               get_datalist, root, "train")
    assert get_datalist(root, "train", min_slice_size=1)  # the setting lowers the bound
    grey_png(victim, 16, 9000)
    user_error(ImageFileError, f"'{victim}' gives slices of 9000x16 pixels, padded to a square", get_datalist, root, "train")


def test_training_refuses_a_tiny_png_in_one_line(tmp_path, demo_root):
    root = shutil.copytree(demo_root, tmp_path / "data")
    victim = sorted((root / "keras_png_slices_train").glob("*.png"))[0]
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(victim)
    user_error(ImageFileError, f"'{victim}' gives slices of 1x1 pixels", run_bundle, "training", TRAIN,
               bundle_root=str(tmp_path / "bundle"), dataset_dir=str(root), max_epochs=1)


def nifti_header_only(path: Path, shape: tuple[int, ...], affine: np.ndarray | None = None) -> Path:
    """A .nii whose header declares ``shape`` but that holds almost no voxel data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    if affine is not None:
        header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    return path


def test_thin_nifti_slices_are_refused_from_the_header(tmp_path):
    # a 4-voxel-thin 16 x 30,000 volume: 2 million voxels, far below max_volume_voxels; slices pad to 9 * 10^8 pixels
    data = tmp_path / "data"
    data.mkdir()
    thin = nifti_header_only(tmp_path / "thin.nii", (16, 30_000, 4))
    with pytest.raises(ImageFileError, match=r"gives slices of 30000x16 pixels \(its RAS shape is 16x30000x4, "
                                             r"sliced along RAS axis 2\), padded to a square of 30000x30000"):
        read_input(thin)
    tiny = nifti_header_only(data / "tiny.nii", (3, 40, 40))
    with pytest.raises(ImageFileError, match=r"'.*tiny.nii' gives slices of 40x3 pixels .*min_slice_size"):
        get_datalist(data, "train", dataset_format="nifti", val_fraction=0.0, test_fraction=0.0)
    tiny.unlink()
    shutil.move(thin, data / "thin.nii")
    with pytest.raises(ImageFileError, match="'.*thin.nii' gives slices of 30000x16 pixels.*padded to a square"):
        get_datalist(data, "train", dataset_format="nifti", val_fraction=0.0, test_fraction=0.0)


# ------------------------------------------------------------------------------------- NIfTI read slice by slice
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


def test_slices_read_from_the_proxy_equal_the_whole_volume_reader(tmp_path):
    for path in volume_files(tmp_path):
        ras = read_volume_ras(path).ras
        low, high = robust_range(ras)
        volume = VolumeSlices(path)
        # the streamed percentiles are np.percentile's, to the last bit
        assert volume.intensity_range() == (low, high), path
        scaled = scale_to_unit(ras, low, high)
        for file_axis in (0, 1):  # strided blocks, read through the file one chunk of last-axis slabs at a time
            whole = volume.read_file_slab(file_axis, 0, volume.shape3[file_axis])
            np.testing.assert_array_equal(volume.read_file_slab(file_axis, 0, volume.shape3[file_axis], 1), whole)
        for axis in range(3):
            planes = dict(volume.planes(axis, range(ras.shape[axis]), low, high, block_bytes=64))
            for index in range(ras.shape[axis]):
                expected = volume_plane(scaled, axis, index)
                np.testing.assert_array_equal(planes[index], expected)
                np.testing.assert_array_equal(volume.plane(axis, index, low, high), expected)


class CountingProxy:
    """Wraps a nibabel array proxy and records how many voxels each read returns."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.reads: list[int] = []

    def _get_scaled(self, dtype, slicer):
        data = self.proxy._get_scaled(dtype=dtype, slicer=slicer)
        self.reads.append(int(data.size))
        return data

    def __getitem__(self, slicer):
        data = self.proxy[slicer]
        self.reads.append(int(data.size))
        return data


def test_a_training_slice_reads_only_its_own_voxels(tmp_path):
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(brain_like_volume((24, 28, 20), 3), PERMUTED_AFFINE), str(path))
    volume = open_volume_slices(path)
    counting = CountingProxy(volume.dataobj)
    volume.dataobj = counting
    low, high = volume_intensity_range(path)
    # the percentiles stream the volume one file slab (24 x 28 voxels) at a time: never the volume at once
    assert counting.reads and max(counting.reads) == 24 * 28
    counting.reads.clear()
    ras = scale_to_unit(read_volume_ras(path).ras, low, high)
    contiguous = int(volume.to_ras[2, 0])  # the RAS axis the file stores last (here 0: the affine permutes axes)
    for index in range(ras.shape[contiguous]):
        plane = read_volume_plane(path, contiguous, index)
        np.testing.assert_array_equal(plane, volume_plane(ras, contiguous, index))
        assert counting.reads[-1] == plane.size, "one read of exactly the slice's voxels"
    assert len(counting.reads) == ras.shape[contiguous]
    # slices across the storage order come from one block of consecutive slices (here, the whole small volume)
    counting.reads.clear()
    for axis in sorted({0, 1, 2} - {contiguous}):
        for index in range(ras.shape[axis]):
            np.testing.assert_array_equal(read_volume_plane(path, axis, index), volume_plane(ras, axis, index))
    assert counting.reads == [24 * 28 * 20, 24 * 28 * 20]


def test_nifti_training_items_equal_the_whole_volume_slices(nifti_root):
    dataset = get_dataset(nifti_root, "train", image_size=16, cache_rate=0.0)
    files = sorted({item["image"] for item in dataset.data})
    reference = {item["name"]: item for item in load_nifti_slices(files)}
    from monai_vqbrain.data import get_slice_transforms

    transform = get_slice_transforms(16, load_from_file=False)
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        expected = transform(reference[dataset.data[index]["name"]])["image"]
        torch.testing.assert_close(dataset[index]["image"], expected, rtol=0, atol=0)


def test_inference_reads_volumes_at_model_size_with_the_same_outputs(tmp_path):
    from monai.transforms import Compose

    for path in volume_files(tmp_path)[:6]:
        if min(VolumeSlices(path).ras_shape) < 2:
            continue
        pipelines = []
        for image_size in (None, 32):
            load = LoadInputd("image", min_slice_size=1, image_size=image_size)
            pipelines.append(Compose([load, PadToSquared("image"), ResizeSquared("image", size=32)]))
        whole, by_slice = (pipeline({"image": str(path)}) for pipeline in pipelines)
        # resizing one slice or a stack of them sums in another order inside torch's kernels: a float32 ulp or two
        torch.testing.assert_close(by_slice["image"].as_tensor(), whole["image"].as_tensor(), rtol=0, atol=2e-7)
        restored = []
        for pipeline, data in zip(pipelines, (whole, by_slice), strict=True):
            # a reconstruction outside [0, 1] in places, so that the clipping order matters
            data["image"] = data["image"] * 1.3 - 0.1
            restored.append(pipeline.inverse(data)["image"].numpy())
        scale = float(np.ptp(restored[0])) or 1.0
        np.testing.assert_allclose(restored[1], restored[0], rtol=0, atol=1e-6 * scale)


# ------------------------------------------------------------------------------------ checkpoints by their size
def padded_checkpoint(source: Path, target: Path, padding_bytes: int) -> Path:
    """``source`` re-zipped (deflated) with an extra entry of ``padding_bytes`` zeros: a small file, a large load."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        prefix = original.namelist()[0].split("/")[0]
        for entry in original.infolist():
            archive.writestr(entry, original.read(entry))
        with archive.open(f"{prefix}/data/999", "w") as handle:
            block = bytes(2**20)
            for _ in range(padding_bytes // len(block)):
                handle.write(block)
    return target


def test_oversized_checkpoints_are_refused_before_loading(tmp_path, monkeypatch):
    vqvae = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, **TINY_NETWORK)
    prior = GatedPixelCNN(spatial_dims=2, num_embeddings=TINY_NETWORK["num_embeddings"], channels=8, num_layers=2)
    optimizer = torch.optim.Adam(vqvae.parameters())
    save_checkpoint(tmp_path / "model.pt", {"model": vqvae.state_dict(), "metadata": {}})
    save_checkpoint(tmp_path / "last.pt", {"model": vqvae.state_dict(), "optimizer": optimizer.state_dict()})
    save_checkpoint(tmp_path / "prior.pt", {"model": prior.state_dict(), "metadata": {}})
    padding = 80 * 2**20  # the bound for these tiny networks is 64 MiB and 4x their weights
    bad = {name: padded_checkpoint(tmp_path / name, tmp_path / f"big_{name}", padding)
           for name in ("model.pt", "last.pt", "prior.pt")}
    assert all(path.stat().st_size < 2**20 for path in bad.values())
    load_network_weights(vqvae, tmp_path / "model.pt")  # the real ones load

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before its size was checked")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match=r"'.*big_model.pt' unpacks to 8\d,\d{3},\d{3} bytes, more than"):
        load_network_weights(vqvae, bad["model.pt"])
    loader = TrainingCheckpointLoader(bad["last.pt"], {"model": vqvae, "optimizer": optimizer})
    with pytest.raises(CheckpointError, match="big_last.pt' unpacks to"):
        loader._load(None)
    with pytest.raises(CheckpointError, match="big_prior.pt' unpacks to"):
        load_prior(bad["prior.pt"], network=prior)


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


def test_a_recursive_glob_follows_no_link_cycle(tmp_path, caplog):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(brain_like_slice(32, 0)).save(folder / name)
    # two links to '.': Python's glob would list 2^40 paths before the OS says the path is too deep
    os.symlink(".", folder / "loop1")
    os.symlink(".", folder / "sub" / "loop2")
    os.symlink("..", folder / "sub" / "up")
    os.symlink("c.png", folder / "sub" / "c.png")  # a link to itself: a bad input of its own, not a folder
    files = finishes(find_input_files, str(folder / "**" / "*.png"))
    assert [p.relative_to(folder).as_posix() for p in files] == ["a.png", "sub/b.png", "sub/c.png"]
    assert sum("symbolic link back to" in r.message for r in caplog.records) == 3
    with pytest.raises(ImageFileError, match="'.*c.png' is a loop of symbolic links"):
        read_input(files[-1])
    assert finishes(find_input_files, str(folder / "**")) == files


def test_link_loops_in_data_sets_are_one_error_naming_the_file(tmp_path, demo_root, nifti_root):
    png = shutil.copytree(demo_root, tmp_path / "png")
    loop = png / "keras_png_slices_train" / "loop.png"
    os.symlink(loop.name, loop)
    user_error(ImageFileError, f"'{loop}' is a loop of symbolic links", finishes, get_datalist, png, "train")
    nifti = shutil.copytree(nifti_root, tmp_path / "nifti")
    first, second = nifti / "x.nii.gz", nifti / "y.nii.gz"
    os.symlink(second.name, first)
    os.symlink(first.name, second)
    user_error(ImageFileError, "is a loop of symbolic links", finishes, get_datalist, nifti, "train")
    with pytest.raises(ImageFileError, match="loop of symbolic links"):
        read_input(first)


# -------------------------------------------------------------------------------------------------- bad affines
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


@pytest.mark.parametrize("kind", sorted(BAD_AFFINES))
def test_a_bad_affine_is_a_bad_file_in_training(tmp_path, nifti_root, kind):
    root = shutil.copytree(nifti_root, tmp_path / "nifti")
    victim = save_with_affine(root / NIFTI_FILES[0], BAD_AFFINES[kind])
    expected = "NaN or infinite values" if kind != "singular" else "no clear axis directions"
    with pytest.raises(ImageFileError, match=f"'{victim}' has .*affine.*{expected}" if kind != "singular"
                       else f"'{victim}' has an affine with {expected}"):
        for split in ("train", "validate", "test"):
            get_datalist(root, split)


def test_a_bad_affine_is_skipped_in_inference_and_the_others_are_reconstructed(trained_bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_with_affine(inputs / "a_nan.nii.gz", BAD_AFFINES["nan"])
    save_with_affine(inputs / "b_singular.nii.gz", BAD_AFFINES["singular"])
    nib.save(nib.Nifti1Image(brain_like_volume((24, 28, 20), 2), NIFTI_AFFINE), str(inputs / "c_good.nii.gz"))
    error = user_error(InputsSkippedError, "2 of 3 input file(s) were skipped", infer, trained_bundle, str(inputs),
                       tmp_path / "out")
    assert error.exit_code == 3
    assert (tmp_path / "out" / "c_good_recon.nii.gz").is_file()
    table = (tmp_path / "out" / METRICS_FILE).read_text()
    assert "a_nan.nii.gz" in table and "NaN or infinite" in table and "no clear axis directions" in table


def test_a_thin_png_is_skipped_in_inference_not_the_run(trained_bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    grey_png(inputs / "a_thin.png", 16, 9000)
    Image.fromarray(brain_like_slice(40, 1)).save(inputs / "b_good.png")
    Image.fromarray(np.full((1, 1), 9, np.uint8)).save(inputs / "c_dot.png")
    user_error(InputsSkippedError, "2 of 3 input file(s) were skipped", infer, trained_bundle, str(inputs),
               tmp_path / "out")
    assert (tmp_path / "out" / "b_good_recon.png").is_file()
    table = (tmp_path / "out" / METRICS_FILE).read_text()
    assert "padded to a square of 9000x9000" in table and "gives slices of 1x1 pixels" in table


# --------------------------------------------------------------------------------- damaged histories and caches
@pytest.mark.parametrize("content", ['[{"epoch": 1, "loss": 0.5}, {"epo', '{"epoch": 1}', '[1, 2]'])
def test_a_damaged_history_is_one_line_saying_how_to_recover(tmp_path, content):
    history = tmp_path / "training_history.json"
    history.write_text(content)
    with pytest.raises(HistoryFileError, match=f"training history '{history}' is damaged .*delete it.*--overwrite true"):
        read_history(history)


def test_evaluating_refuses_a_damaged_history_before_writing_any_report(trained_bundle, demo_root, tmp_path):
    bundle = shutil.copytree(trained_bundle, tmp_path / "bundle")
    (bundle / "models" / "training_history.json").write_text('[{"epoch": 1, "loss": 0.5}, {"ep')
    output_dir = tmp_path / "report"
    user_error(HistoryFileError, "training_history.json' is damaged", run_bundle, "evaluating", EVALUATE,
               bundle_root=str(bundle), output_dir=str(output_dir), dataset_dir=str(demo_root))
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_a_tampered_code_cache_is_one_line_and_overwrite_encodes_again(tmp_path, demo_root, one_thread):
    vqvae = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, **TINY_NETWORK).eval()
    cache = tmp_path / "codes_train.pt"
    kwargs = {"dataset_dir": str(demo_root)}
    entry = load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32)
    tampered = dict(entry)
    tampered["codes"] = entry["codes"].clone()
    tampered["codes"][0, 0, 0] = 999  # a codebook of 32
    save_checkpoint(cache, tampered)
    with pytest.raises(CheckpointError, match=rf"code cache '{cache}' is damaged \(it holds codes from \d+ to 999, "
                                              r"outside the VQ-VAE's codebook \[0, 32\)\); delete it, or pass --overwrite"):
        load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32)
    tampered["codes"] = entry["codes"].float()
    save_checkpoint(cache, tampered)
    with pytest.raises(CheckpointError, match="not an int16/int32 tensor"):
        load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32)
    again = load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32, overwrite=True)
    assert torch.equal(again["codes"], entry["codes"])


# ------------------------------------------------------------------------------------------ files that vanish
def test_a_file_that_vanishes_mid_run_is_named(tmp_path, demo_root, nifti_root):
    png = shutil.copytree(demo_root, tmp_path / "png")
    dataset = get_dataset(png, "train", image_size=32, cache_rate=0.0)
    gone = Path(dataset.data[1]["image"])
    gone.unlink()
    with pytest.raises(Exception) as caught:
        dataset[1]
    error = find_user_error(caught.value)
    assert isinstance(error, ImageFileError) and f"'{gone}' was listed but no longer exists" in str(error)
    nifti = shutil.copytree(nifti_root, tmp_path / "nifti")
    dataset = get_dataset(nifti, "train", image_size=16, cache_rate=0.0)
    gone = Path(dataset.data[-1]["image"])
    gone.unlink()
    with pytest.raises(Exception) as caught:
        dataset[len(dataset) - 1]
    error = find_user_error(caught.value)
    assert isinstance(error, ImageFileError) and f"'{gone}' was listed but no longer exists" in str(error)


# --------------------------------------------------------------------------------------- MONAI's config warning
def test_monais_config_warning_is_filtered_once_our_hook_is_installed(tmp_path):
    from monai.bundle.scripts import create_workflow

    from monai_vqbrain.workflows import install_error_hook

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"run": [], "initialize": [], "finalize": []}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        install_error_hook()
        try:
            create_workflow(config_file=str(config), workflow_type="train")
        except Exception:  # a config without the properties a training workflow needs: only the warning matters
            pass
        other = warnings.warn_explicit("parsing config_file x", UserWarning, "elsewhere.py", 1, module="elsewhere")
    assert other is None
    messages = [str(w.message) for w in caught]
    assert not any(m.startswith("parsing config_file") and str(config) in m for m in messages), messages
    assert any(m == "parsing config_file x" for m in messages), "only MONAI's own warning is filtered"
