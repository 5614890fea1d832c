"""Tests of the data package on tiny datasets in the real OASIS PNG and NIfTI/Analyze layouts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ANALYZE_FILE, NIFTI_AFFINE, NIFTI_FILES, PNG_CASES, PNG_SLICES, RGB_FILE, brain_like_volume
from monai.data import CacheDataset, DataLoader
from nifti_oracle import load_nifti_slices
from PIL import Image

from monai_vqbrain.data import (
    SPLITS,
    detect_dataset_format,
    get_dataset,
    get_slice_transforms,
    list_nifti_volumes,
    list_oasis_png_split,
    resolve_dataset_dir,
)
from monai_vqbrain.data import datasets as datasets_module
from monai_vqbrain.errors import DatasetError, ImageFileError


def expected_png_names(split: str) -> list[str]:
    return [f"case_{c:03d}_slice_{s}.nii.png" for c in PNG_CASES[split] for s in PNG_SLICES[split]]


@pytest.fixture
def png_copy(oasis_png_root, tmp_path) -> Path:
    """A private copy of the OASIS PNG fixture that a test may change."""
    return Path(shutil.copytree(oasis_png_root, tmp_path / "keras_png_slices_data"))


@pytest.fixture
def nifti_copy(nifti_root, tmp_path) -> Path:
    """A private copy of the NIfTI fixture that a test may change."""
    return Path(shutil.copytree(nifti_root, tmp_path / "nifti"))


def save_volume(path: Path, data: np.ndarray, affine: np.ndarray = NIFTI_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# ----------------------------------------------------------------------------------------------------------------
# OASIS PNG layout


@pytest.mark.parametrize("split", SPLITS)
def test_png_split_lists_its_folder_in_case_slice_order(oasis_png_root, split):
    items = list_oasis_png_split(oasis_png_root, split)
    # numeric order: slice_10 after slice_2, although "10" < "2" as text
    assert [item["name"] for item in items] == expected_png_names(split)
    for item in items:
        path = Path(item["image"])
        assert path.is_absolute() and path.is_file()
        assert path.parent.name == f"keras_png_slices_{split}"  # never the seg_ mask folders


def test_png_split_aliases_and_unknown_split(oasis_png_root):
    assert list_oasis_png_split(oasis_png_root, "val") == list_oasis_png_split(oasis_png_root, "validate")
    with pytest.raises(DatasetError, match="unknown split 'training2'"):
        list_oasis_png_split(oasis_png_root, "training2")


def test_png_root_may_be_the_folder_holding_keras_png_slices_data(oasis_png_root):
    parent = oasis_png_root.parent
    assert detect_dataset_format(parent) == "png"
    assert list_oasis_png_split(parent, "test") == list_oasis_png_split(oasis_png_root, "test")


def test_png_listing_skips_hidden_and_other_files_and_sorts_other_pngs_last(png_copy):
    train = png_copy / "keras_png_slices_train"
    shutil.copy(train / "case_001_slice_0.nii.png", train / "a_extra.png")
    (train / ".DS_Store").write_bytes(b"\x00junk")
    (train / "._case_001_slice_0.nii.png").write_bytes(b"macOS resource fork, not an image")
    (train / "notes.txt").write_text("not an image")
    (train / "subfolder").mkdir()
    names = [item["name"] for item in list_oasis_png_split(png_copy, "train")]
    assert names == expected_png_names("train") + ["a_extra.png"]


def test_png_dataset_items_are_grey_square_float_images_in_unit_range(oasis_png_root):
    dataset = get_dataset(oasis_png_root, "train", image_size=16)
    assert isinstance(dataset, CacheDataset)
    assert len(dataset) == len(expected_png_names("train"))
    for index, name in enumerate(expected_png_names("train")):
        item = dataset[index]
        assert item["name"] == name
        image = item["image"]
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert image.shape == (1, 16, 16)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert float(image.max()) > 0.3  # a brain, not an empty image


def test_png_rgb_becomes_the_mean_grey_channel_at_absolute_scale(oasis_png_root):
    dataset = get_dataset(oasis_png_root, "train", image_size=32)  # native size: no resampling
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["name"] == RGB_FILE)
    rgb = np.asarray(Image.open(oasis_png_root / "keras_png_slices_train" / RGB_FILE), dtype=np.float64)
    assert rgb.shape == (32, 32, 3)
    expected = rgb.mean(axis=-1) / 255.0
    assert item["image"].shape == (1, 32, 32)
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-5)


def test_png_keeps_absolute_contrast_and_16_bit_depth(tmp_path):
    dark = np.zeros((8, 8), dtype=np.uint8)
    dark[2:6, 2:6] = 51  # a dark image must stay dark: no per-image min-max stretch
    deep = np.zeros((8, 8), dtype=np.uint16)
    deep[2:6, 2:6] = 13107
    Image.fromarray(dark).save(tmp_path / "dark.png")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    transforms = get_slice_transforms(image_size=8)
    for name in ("dark.png", "deep.png"):
        image = transforms({"image": str(tmp_path / name), "name": name})["image"]
        assert image.shape == (1, 8, 8)
        assert float(image.max()) == pytest.approx(0.2, abs=1e-6)
        assert float(image.min()) == 0.0


def test_png_non_square_is_padded_symmetrically_then_resized(tmp_path):
    wide = np.full((10, 20), 255, dtype=np.uint8)  # 10 rows, 20 columns
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = get_slice_transforms(image_size=20)({"image": str(tmp_path / "wide.png"), "name": "wide.png"})["image"]
    assert image.shape == (1, 20, 20)
    rows = image[0].mean(dim=1)
    assert torch.all(rows[:5] == 0) and torch.all(rows[15:] == 0) and torch.all(rows[5:15] == 1)
    shrunk = get_slice_transforms(image_size=10)({"image": str(tmp_path / "wide.png"), "name": "wide.png"})["image"]
    assert shrunk.shape == (1, 10, 10)
    # area averaging halves the side exactly: the padding stays black and the image stays white
    np.testing.assert_allclose(shrunk[0].mean(dim=1).numpy(), [0] * 2 + [0.5] + [1] * 4 + [0.5] + [0] * 2, atol=1e-6)


def test_png_enlarging_interpolates(oasis_png_root):
    native = get_dataset(oasis_png_root, "test", image_size=32, max_items=1)[0]["image"]
    image = get_dataset(oasis_png_root, "test", image_size=48, max_items=1)[0]["image"]
    assert image.shape == (1, 48, 48)
    # bilinear interpolation makes new values; pixel replication would not
    assert len(torch.unique(image)) > 2 * len(torch.unique(native))


def test_names_survive_default_collation(oasis_png_root):
    batch = next(iter(DataLoader(get_dataset(oasis_png_root, "validate", image_size=16), batch_size=3)))
    assert batch["image"].shape == (3, 1, 16, 16)
    assert batch["name"] == expected_png_names("validate")[:3]


def test_max_items_truncates(oasis_png_root):
    dataset = get_dataset(oasis_png_root, "train", image_size=16, max_items=2)
    assert [dataset[i]["name"] for i in range(len(dataset))] == expected_png_names("train")[:2]


def test_missing_split_folder_is_named(png_copy):
    shutil.rmtree(png_copy / "keras_png_slices_test")
    with pytest.raises(DatasetError, match="keras_png_slices_test' does not exist"):
        get_dataset(png_copy, "test")
    assert len(get_dataset(png_copy, "validate", image_size=16)) == 4  # the other splits still work


def test_empty_split_folder_is_named(png_copy):
    folder = png_copy / "keras_png_slices_validate"
    for path in folder.iterdir():
        path.unlink()
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=re.escape(f"'{folder}' holds no PNG images")):
        list_oasis_png_split(png_copy, "validate")


@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_corrupt_png_is_named_before_training(png_copy, content):
    train = png_copy / "keras_png_slices_train"
    bad = train / "case_009_slice_0.nii.png"
    if content == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(2000))
    elif content == "truncated":
        data = (train / "case_001_slice_0.nii.png").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(b"")
    with pytest.raises(ImageFileError, match="case_009_slice_0.nii.png"):
        list_oasis_png_split(png_copy, "train")
    with pytest.raises(ImageFileError, match="case_009_slice_0.nii.png"):
        get_dataset(png_copy, "train", image_size=16)


# ----------------------------------------------------------------------------------------------------------------
# dataset folder and format


def test_missing_dataset_dir_is_named_and_never_replaced_by_demo_data(tmp_path, monkeypatch):
    demo_calls = []
    monkeypatch.setattr(datasets_module, "ensure_demo_dataset", lambda *a, **k: demo_calls.append(a))
    missing = tmp_path / "no_such_folder"
    with pytest.raises(
        DatasetError, match=re.escape(f"dataset_dir '{missing}' does not exist; expected a folder holding")
    ):
        resolve_dataset_dir(missing, demo_dir=tmp_path / "demo")
    with pytest.raises(DatasetError, match="does not exist"):
        get_dataset(str(missing), "train")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        resolve_dataset_dir(a_file)
    assert demo_calls == []
    assert not (tmp_path / "demo").exists()


def test_no_dataset_dir_means_demo_data(tmp_path, monkeypatch):
    demo_calls = []
    monkeypatch.setattr(datasets_module, "ensure_demo_dataset", lambda root: demo_calls.append(root) or Path(root))
    assert resolve_dataset_dir(None, demo_dir=tmp_path / "demo") == tmp_path / "demo"
    assert resolve_dataset_dir("", demo_dir=tmp_path / "demo") == tmp_path / "demo"
    monkeypatch.setenv("MONAI_VQBRAIN_DEMO_DIR", str(tmp_path / "env_demo"))
    assert resolve_dataset_dir(None) == tmp_path / "env_demo"
    assert demo_calls == [tmp_path / "demo", tmp_path / "demo", tmp_path / "env_demo"]


def test_detect_dataset_format(oasis_png_root, nifti_root, demo_root, tmp_path):
    assert detect_dataset_format(oasis_png_root) == "png"
    assert detect_dataset_format(demo_root) == "png"
    assert detect_dataset_format(nifti_root) == "nifti"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(DatasetError, match=r"has no known layout: expected .*found: photos/"):
        detect_dataset_format(tmp_path)
    with pytest.raises(DatasetError, match="looks like one split folder"):
        detect_dataset_format(oasis_png_root / "keras_png_slices_train")
    seg_only = tmp_path / "seg_only"
    shutil.copytree(oasis_png_root / "keras_png_slices_seg_train", seg_only / "keras_png_slices_seg_train")
    with pytest.raises(DatasetError, match="no known layout"):
        detect_dataset_format(seg_only)


def test_bad_options_are_rejected(oasis_png_root):
    with pytest.raises(ValueError, match="dataset_format"):
        get_dataset(oasis_png_root, "train", dataset_format="jpeg")
    with pytest.raises(ValueError, match="max_items"):
        get_dataset(oasis_png_root, "train", max_items=0)
    with pytest.raises(ValueError, match="image_size"):
        get_slice_transforms(image_size=0)


# ----------------------------------------------------------------------------------------------------------------
# NIfTI / Analyze volumes


def all_volume_files(root: Path) -> set[Path]:
    return {(root / f).resolve() for f in NIFTI_FILES} | {(root / ANALYZE_FILE).resolve()}


def test_nifti_subject_split_covers_all_volumes_without_leakage(nifti_root):
    splits = {split: list_nifti_volumes(nifti_root, split) for split in SPLITS}
    listed = [path for files in splits.values() for path in files]
    assert len(listed) == len(set(listed)) and set(listed) == all_volume_files(nifti_root)
    # 6 subjects: at least one in each split, the rest in train
    assert all(splits[split] for split in SPLITS) and len(splits["train"]) >= 4
    assert splits["train"] == sorted(splits["train"])
    # both sessions of OAS2_0004 land in the same split
    owner = {path.name: split for split, files in splits.items() for path in files}
    assert owner["OAS2_0004_MR1_T1.nii.gz"] == owner["OAS2_0004_MR2_T1.nii.gz"]
    sessions = [p for p in listed if "OAS2_0004" in p.name]
    assert len(sessions) == 2


def test_nifti_split_is_deterministic_for_a_seed(nifti_root):
    first = [list_nifti_volumes(nifti_root, split, seed=3) for split in SPLITS]
    assert first == [list_nifti_volumes(nifti_root, split, seed=3) for split in SPLITS]
    others = {tuple(map(tuple, [list_nifti_volumes(nifti_root, s, seed=seed) for s in SPLITS])) for seed in range(6)}
    assert len(others) > 1  # the seed does change the assignment


def test_nifti_split_fractions(nifti_root):
    train = list_nifti_volumes(nifti_root, "train", val_fraction=0.0, test_fraction=0.5)
    test = list_nifti_volumes(nifti_root, "test", val_fraction=0.0, test_fraction=0.5)
    assert len({p.parent for p in test}) >= 2 and set(train).isdisjoint(test)
    with pytest.raises(DatasetError, match="split 'validate' of NIfTI dataset folder .* is empty"):
        list_nifti_volumes(nifti_root, "validate", val_fraction=0.0)
    with pytest.raises(ValueError, match="sum to less than 1"):
        list_nifti_volumes(nifti_root, "train", val_fraction=0.5, test_fraction=0.5)


def test_nifti_explicit_split_folders(tmp_path):
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(count):
            save_volume(tmp_path / split / f"vol{i}.nii", brain_like_volume((8, 9, 10), i))
    assert [p.name for p in list_nifti_volumes(tmp_path, "train")] == ["vol0.nii", "vol1.nii"]
    assert [p.parent.name for p in list_nifti_volumes(tmp_path, "validate")] == ["val"]
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DatasetError, match=re.escape(f"NIfTI dataset folder '{tmp_path}' has split folders")):
        list_nifti_volumes(tmp_path, "test")
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=re.escape(f"split folder '{tmp_path / 'test'}' holds no volumes")):
        list_nifti_volumes(tmp_path, "test")


def test_nifti_slices_default_range_orientation_and_names(nifti_root):
    path = nifti_root / NIFTI_FILES[0]
    items = load_nifti_slices([path], min_foreground=0.0)
    # axial slices (axis 2 of the RAS volume, 20 long) in the middle 60%: indices 4..15
    assert [item["name"] for item in items] == [f"{path.name}#slice{k}" for k in range(4, 16)]
    for item in items:
        image = item["image"]
        assert isinstance(image, np.ndarray) and image.dtype == np.float32
        assert image.shape == (1, 28, 24)  # rows: anterior-posterior, columns: left-right
        assert image.min() >= 0.0 and image.max() <= 1.0
    assert max(item["image"].max() for item in items) == pytest.approx(1.0)


def test_nifti_slice_axis_range_and_foreground(nifti_root):
    path = nifti_root / NIFTI_FILES[1]
    every = load_nifti_slices([path], slice_range=(0.0, 1.0), min_foreground=0.0)
    assert len(every) == 20
    sagittal = load_nifti_slices([path], slice_axis=0, slice_range=(0.0, 1.0), min_foreground=0.0)
    assert len(sagittal) == 24 and sagittal[0]["image"].shape == (1, 20, 28)
    coronal = load_nifti_slices([path], slice_axis=1, slice_range=(0.5, 1.0), min_foreground=0.0)
    assert [item["name"].split("#")[1] for item in coronal] == [f"slice{k}" for k in range(14, 28)]
    fractions = [float(np.mean(item["image"] > 0.05)) for item in every]
    kept = load_nifti_slices([path], slice_range=(0.0, 1.0), min_foreground=0.5)
    assert 0 < len(kept) < len(every)
    assert len(kept) == sum(f >= 0.5 for f in fractions)
    assert all(np.mean(item["image"] > 0.05) >= 0.5 for item in kept)
    with pytest.raises(ValueError, match="slice_axis"):
        load_nifti_slices([path], slice_axis=3)
    with pytest.raises(ValueError, match="slice_range"):
        load_nifti_slices([path], slice_range=(0.8, 0.2))


def test_nifti_volume_is_reoriented_to_ras_for_display(tmp_path):
    # a bright block at the anterior, right, superior corner of a volume stored with permuted, flipped axes
    ras = np.zeros((12, 14, 10), dtype=np.float32)
    ras[:, :, :] = 0.2
    ras[8:, 10:, 6:] = 1.0
    # stored axes: (S, L, A) -> world (x=R, y=A, z=S) via the affine
    stored = np.transpose(ras[::-1, :, :], (2, 0, 1))
    affine = np.array([[0, -1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    path = save_volume(tmp_path / "permuted.nii.gz", stored, affine)
    items = load_nifti_slices([path], slice_range=(0.0, 1.0), min_foreground=0.0)
    assert len(items) == 10  # the superior axis of the RAS volume has 10 voxels
    top = items[-1]["image"][0]
    assert top.shape == (14, 12)
    # display orientation: anterior at the top, the patient's right on the right
    assert top[:4, 8:].min() == pytest.approx(1.0) and top[4:, :].max() < 0.5 and top[:, :8].max() < 0.5
    canonical = nib.as_closest_canonical(nib.load(str(path))).get_fdata()
    np.testing.assert_array_equal(np.rot90(canonical[:, :, -1]) > 0.5, top > 0.5)


def test_analyze_pair_loads(nifti_root):
    items = load_nifti_slices([nifti_root / ANALYZE_FILE])
    assert items and all(item["name"].startswith(Path(ANALYZE_FILE).name + "#slice") for item in items)
    assert all(item["image"].shape == (1, 28, 24) for item in items)


def test_analyze_image_without_header_is_named(nifti_copy):
    image = nifti_copy / ANALYZE_FILE
    image.with_suffix(".hdr").unlink()
    with pytest.raises(ImageFileError, match=re.escape(f"Analyze image '{image}' has no header")):
        list_nifti_volumes(nifti_copy, "train")
    with pytest.raises(ImageFileError, match="has no header"):
        get_dataset(nifti_copy, "train")


def test_4d_volumes(nifti_copy):
    four_d = save_volume(nifti_copy / "OAS1_0007_MR1" / "fmri.nii.gz", np.ones((6, 7, 8, 3), dtype=np.float32))
    with pytest.raises(ImageFileError, match=r"fmri.nii.gz' is a 4D volume of shape \(6, 7, 8, 3\)"):
        load_nifti_slices([four_d])
    with pytest.raises(ImageFileError, match="fmri.nii.gz"):
        for split in SPLITS:
            get_dataset(nifti_copy, split)
    single_frame = save_volume(nifti_copy / "one_frame.nii", brain_like_volume((6, 7, 8), 0)[..., None])
    assert len(load_nifti_slices([single_frame], slice_range=(0, 1), min_foreground=0)) == 8


def test_2d_and_thin_volumes_are_one_slice(tmp_path):
    flat = save_volume(tmp_path / "flat.nii.gz", brain_like_volume((16, 12), 1))
    thin = save_volume(tmp_path / "thin.nii.gz", brain_like_volume((16, 12), 2)[:, None, :])
    for path in (flat, thin):
        items = load_nifti_slices([path])
        assert len(items) == 1 and items[0]["name"] == f"{path.name}#slice0"
        assert sorted(items[0]["image"].shape) == [1, 12, 16]


def test_corrupt_volume_is_named(tmp_path):
    bad = tmp_path / "OAS1_0001_MR1.nii.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ImageFileError, match="OAS1_0001_MR1.nii.gz"):
        load_nifti_slices([bad])


def test_nifti_dataset_items(nifti_root):
    dataset = get_dataset(nifti_root, "train", image_size=32)
    assert len(dataset) > 0
    names = [dataset[i]["name"] for i in range(len(dataset))]
    assert all("#slice" in name for name in names)
    image = dataset[0]["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (1, 32, 32)
    assert all(0.0 <= float(dataset[i]["image"].min()) and float(dataset[i]["image"].max()) <= 1.0 for i in range(5))
    assert len(get_dataset(nifti_root, "train", image_size=16, max_items=3)) == 3
    with pytest.raises(DatasetError, match="gave no slices"):
        get_dataset(nifti_root, "test", min_foreground=1.0)


@pytest.mark.parametrize("shape, size", [((2, 20, 30), 16), ((1, 12, 7), 16), ((1, 16, 16), 16), ((1, 32, 20), 32)])
def test_padding_and_resizing_are_invertible(shape, size):
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from monai_vqbrain.data import PadToSquared, ResizeSquared

    steps = Compose([PadToSquared("image"), ResizeSquared("image", size=size)])
    image = MetaTensor(torch.rand(shape))
    model_size = steps({"image": image})["image"]
    assert model_size.shape == (shape[0], size, size)
    restored = steps.inverse({"image": model_size})["image"]
    assert restored.shape == shape and not restored.applied_operations
    if max(shape[1:]) == size:  # padding alone is undone exactly
        torch.testing.assert_close(restored.as_tensor(), image.as_tensor())


def test_nifti_splits_log_their_volumes_subjects_and_slices(nifti_root, caplog):
    from monai_vqbrain.data import get_datalist

    counts = {}
    for split in SPLITS:
        caplog.clear()
        with caplog.at_level("INFO", logger="monai_vqbrain.data.datasets"):
            items = get_datalist(nifti_root, split, dataset_format="nifti")
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"NIfTI {split} split:")]
        volumes = len(list_nifti_volumes(nifti_root, split))
        assert f"{volumes} volume(s) of " in line and f", {len(items)} slice(s) along slice_axis=2" in line, line
        counts[split] = int(re.search(r"of (\d+) subject", line)[1])
    # 7 volumes (the NIfTI files and the Analyze pair) of 6 subjects: OAS2_0004's two sessions are one
    assert sum(counts.values()) == 6, counts
