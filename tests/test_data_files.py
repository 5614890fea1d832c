"""Data files a user points the bundle at: refused from their headers before decoding, checked whole up front, named
in one message; thin and tiny slices refused from their headers; NIfTI volumes read a slice at a time with the
values of the whole-volume reader; links in a data set (loops, bad targets, targets outside it); bad affines; files
that vanish mid-run."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    BAD_AFFINES,
    NIFTI_AFFINE,
    NIFTI_FILES,
    PERMUTED_AFFINE,
    TRAIN,
    brain_like_volume,
    finishes,
    grey_png,
    run_bundle,
    save_with_affine,
    user_error,
    volume_files,
)
from nifti_oracle import load_nifti_slices, read_volume_ras
from PIL import Image

from monai_vqbrain.data import get_datalist, get_dataset, get_slice_transforms
from monai_vqbrain.data.nifti import (
    VolumeSlices,
    check_nifti_header,
    open_volume_slices,
    robust_range,
    scale_to_unit,
    volume_intensity_range,
    volume_plane,
)
from monai_vqbrain.data.oasis import check_png_file
from monai_vqbrain.data.slices import read_volume_plane
from monai_vqbrain.errors import CheckpointError, ImageFileError, find_user_error
from monai_vqbrain.inference import read_input
from monai_vqbrain.utils import load_checkpoint


def png_with_stream(path: Path, width: int, height: int, stream: bytes) -> Path:
    """An 8-bit grey PNG with valid chunk CRCs around the given compressed pixel ``stream``."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path


def scanlines(width: int, height: int) -> bytes:
    return b"".join(b"\x00" + bytes([(7 * row) % 256] * width) for row in range(height))


def nifti_header_only(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    """A .nii whose header declares ``shape`` but that holds almost no voxel data: a few hundred bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    return path


@pytest.fixture
def png_dataset(tmp_path, demo_root) -> tuple[Path, Path]:
    """A copy of the demo data set and the first training file in it, to be replaced."""
    root = shutil.copytree(demo_root, tmp_path / "data")
    return root, sorted((root / "keras_png_slices_train").glob("*.png"))[0]


def test_short_png_pixel_stream_is_refused_not_zero_filled(png_dataset, tmp_path):
    root, victim = png_dataset
    png_with_stream(victim, 32, 32, zlib.compress(scanlines(32, 32)[: 33 * 16]))
    with pytest.raises(ImageFileError, match=f"'{victim}' is damaged: .*holds 528 of the 1056 bytes.*truncated"):
        get_dataset(root, "train", image_size=32)
    with pytest.raises(ImageFileError, match="truncated"):
        read_input(victim)


def test_corrupt_png_pixel_stream_is_refused_up_front(png_dataset):
    root, victim = png_dataset
    png_with_stream(victim, 32, 32, b"\x78\x9c" + b"not deflate data" * 8)
    with pytest.raises(ImageFileError, match=f"'{victim}' is damaged: its compressed pixel data is corrupt"):
        get_dataset(root, "train", image_size=32)


def test_whole_png_passes(tmp_path):
    check_png_file(png_with_stream(tmp_path / "ok.png", 32, 32, zlib.compress(scanlines(32, 32))))


def test_png_declaring_too_many_pixels_is_refused_from_its_header(png_dataset, tmp_path):
    huge = png_with_stream(tmp_path / "huge.png", 12000, 12000, zlib.compress(b"\x00" * 1000))
    assert huge.stat().st_size < 1000
    with pytest.raises(ImageFileError, match=r"declares 12000x12000 = 144,000,000 .*max_image_pixels=67,108,864"):
        check_png_file(huge)
    with pytest.raises(ImageFileError, match="max_image_pixels"):
        read_input(huge)
    # the limit is a setting: a smaller one refuses the 32x32 demo slices
    root, victim = png_dataset
    with pytest.raises(ImageFileError, match=f"'{victim}' declares 32x32 = 1,024 .*max_image_pixels=1,000"):
        get_dataset(root, "train", image_size=32, max_image_pixels=1000)


def test_png_beyond_pils_bomb_limit_gets_our_message_not_pils(png_dataset, tmp_path):
    # 10 gigapixels: PIL's Image.open itself raises its "decompression bomb" error for this header
    huge = png_with_stream(tmp_path / "bomb.png", 100000, 100000, zlib.compress(b"\x00" * 1000))
    expected = f"'{huge}' declares 100000x100000 = 10,000,000,000 pixels/voxels, more than max_image_pixels="
    for read in (check_png_file, read_input):
        error = pytest.raises(ImageFileError, read, huge).value
        assert str(error).startswith(expected) and "pass --max_image_pixels" in str(error)
        assert "decompression" not in str(error).lower() and "\n" not in str(error)
    root, victim = png_dataset  # training reads the same check
    shutil.copy(huge, victim)
    with pytest.raises(ImageFileError, match=f"'{victim}' declares 100000x100000 = 10,000,000,000 "):
        get_dataset(root, "train", image_size=32)


def test_volume_declaring_too_many_voxels_is_refused_from_its_header(tmp_path):
    huge = nifti_header_only(tmp_path / "huge.nii", (640, 640, 640))
    with pytest.raises(ImageFileError, match=r"declares 640x640x640 = 262,144,000 .*max_volume_voxels=134,217,728"):
        check_nifti_header(huge)
    with pytest.raises(ImageFileError, match="max_volume_voxels"):
        read_input(huge)
    # a header declaring petabytes says what is wrong, not "cannot read the voxels ()"
    absurd = nifti_header_only(tmp_path / "absurd.nii", (30000, 30000, 30000))
    with pytest.raises(ImageFileError, match="30000x30000x30000"):
        read_input(absurd)


def test_rgb_volume_is_named_as_colour_not_truncated(tmp_path):
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    with pytest.raises(ImageFileError, match=r"'.*rgb.nii.gz' stores RGB/RGBA .*expected one grey intensity"):
        read_input(path)
    with pytest.raises(ImageFileError, match="stores RGB"):
        check_nifti_header(path)


def test_nan_volume_in_a_training_set_is_refused(tmp_path, nifti_root):
    root = shutil.copytree(nifti_root, tmp_path / "nifti")
    victim = root / NIFTI_FILES[0]
    volume = brain_like_volume((24, 28, 20), 0).astype(np.float32)
    volume[12, 14, 10] = np.nan
    nib.save(nib.Nifti1Image(volume, NIFTI_AFFINE), str(victim))
    splits = {split: None for split in ("train", "validate", "test")}
    with pytest.raises(ImageFileError, match=f"'{victim}' holds 1 NaN or infinite voxel values"):
        for split in splits:
            get_dataset(root, split, image_size=32)


def test_text_file_named_pt_is_not_reported_as_code(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(CheckpointError, match=f"'{path}' is not a PyTorch checkpoint") as caught:
        load_checkpoint(path)
    assert "run code" not in str(caught.value)
    torch.save({"model": {}}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt") == {"model": {}}


def test_nifti_items_hold_no_pixels_and_load_the_slices_they_name(nifti_root):
    dataset = get_dataset(nifti_root, "train", image_size=16, cache_rate=0.0)
    # a datalist of (volume, slice) items: memory holds the cached model-size images, never full-size slices
    assert all(isinstance(item["image"], str) and "slice_index" in item for item in dataset.data)
    files = [nifti_root / relative for relative in NIFTI_FILES]
    full_size = [item for item in load_nifti_slices(files) if item["name"] == dataset.data[0]["name"]]
    expected = get_slice_transforms(16, load_from_file=False)(full_size[0])["image"]
    torch.testing.assert_close(dataset[0]["image"], expected)


# ------------------------------------------------------------------------------------- links in a data set (issue 25)
def _png_copy(oasis_png_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "keras_png_slices_data"
    shutil.copytree(oasis_png_root, root)
    return root


def test_a_data_set_link_to_a_bad_file_is_named_by_its_entry_and_its_target(oasis_png_root, tmp_path):
    from monai_vqbrain.data import get_datalist

    root = _png_copy(oasis_png_root, tmp_path)
    entry = root / "keras_png_slices_train" / "zz.nii.png"
    entry.symlink_to("/etc/passwd")
    with pytest.raises(ImageFileError) as caught:
        get_datalist(str(root), "train")
    # the entry the user can remove, then where it leads (before: "'/etc/passwd' is not a readable image")
    assert str(caught.value).startswith(f"'{entry}' (a symbolic link to '/etc/passwd') is not a readable image")


def test_data_set_links_that_lead_outside_it_are_read_with_one_warning(oasis_png_root, tmp_path, caplog):
    from monai_vqbrain.data import get_datalist

    root = _png_copy(oasis_png_root, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = outside / "case_009_slice_0.nii.png"
    shutil.copy(root / "keras_png_slices_train" / "case_001_slice_0.nii.png", target)
    entry = root / "keras_png_slices_train" / "case_009_slice_0.nii.png"
    entry.symlink_to(target)
    inside = root / "keras_png_slices_train" / "case_009_slice_1.nii.png"
    inside.symlink_to(root / "keras_png_slices_train" / "case_001_slice_1.nii.png")  # inside: no warning for it
    with caplog.at_level("WARNING", logger="monai_vqbrain"):
        items = get_datalist(str(root), "train")
    assert {"image": str(entry), "name": entry.name} in items and {"image": str(inside), "name": inside.name} in items
    warnings = [r.getMessage() for r in caplog.records if "outside the data folder" in r.getMessage()]
    assert warnings == [
        f"1 file(s) of the train split lie outside the data folder '{root.resolve()}' through symbolic links "
        f"(e.g. '{entry}' -> '{target.resolve()}'); they are read as data: remove the links if that is not meant."
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_vqbrain"):
        get_datalist(str(root), "validate")
    assert not [r for r in caplog.records if "outside the data folder" in r.getMessage()]


def test_a_volume_link_in_a_nifti_data_set_is_listed_by_its_entry(nifti_root, tmp_path, caplog):
    from monai_vqbrain.data.volume_files import find_volume_files

    root = tmp_path / "nifti"
    shutil.copytree(nifti_root, root)
    entry = root / "linked_T1.nii.gz"
    entry.symlink_to(root / NIFTI_FILES[0])
    assert entry.absolute() in find_volume_files(root)


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


@pytest.mark.parametrize("kind", sorted(BAD_AFFINES))
def test_a_bad_affine_is_a_bad_file_in_training(tmp_path, nifti_root, kind):
    root = shutil.copytree(nifti_root, tmp_path / "nifti")
    victim = save_with_affine(root / NIFTI_FILES[0], BAD_AFFINES[kind])
    expected = "NaN or infinite values" if kind != "singular" else "no clear axis directions"
    with pytest.raises(ImageFileError, match=f"'{victim}' has .*affine.*{expected}" if kind != "singular"
                       else f"'{victim}' has an affine with {expected}"):
        for split in ("train", "validate", "test"):
            get_datalist(root, split)


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
