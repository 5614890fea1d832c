"""Hostile input files: refused from their headers before decoding, checked whole up front, named in one message."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import NIFTI_AFFINE, NIFTI_FILES, brain_like_volume
from nifti_oracle import load_nifti_slices

from monai_vqbrain.data import get_dataset, get_slice_transforms
from monai_vqbrain.data.nifti import check_nifti_header
from monai_vqbrain.data.oasis import check_png_file
from monai_vqbrain.errors import CheckpointError, ImageFileError
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
