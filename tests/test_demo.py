"""Tests of the built-in synthetic demo dataset."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_vqbrain.data import (
    DEMO_MARKER,
    SPLITS,
    default_demo_dir,
    ensure_demo_dataset,
    generate_demo_dataset,
    get_dataset,
    list_oasis_png_split,
)
from monai_vqbrain.data import demo as demo_module
from monai_vqbrain.errors import DatasetError

SMALL = {"num_cases": (2, 1, 1), "slices_per_case": 2, "image_size": 16}


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_layout_is_exactly_oasis(demo_root):
    folders = sorted(p.name for p in demo_root.iterdir() if p.is_dir())
    assert folders == sorted([f"keras_png_slices_{s}" for s in SPLITS] + [f"keras_png_slices_seg_{s}" for s in SPLITS])
    cases = {"train": range(1, 5), "validate": range(5, 7), "test": range(7, 9)}  # disjoint across splits
    for split in SPLITS:
        images = sorted(p.name for p in (demo_root / f"keras_png_slices_{split}").iterdir())
        masks = sorted(p.name for p in (demo_root / f"keras_png_slices_seg_{split}").iterdir())
        assert images == sorted(f"case_{c:03d}_slice_{y}.nii.png" for c in cases[split] for y in range(4))
        assert masks == sorted(f"seg_{c:03d}_slice_{y}.nii.png" for c in cases[split] for y in range(4))
        for name in images:
            with Image.open(demo_root / f"keras_png_slices_{split}" / name) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))
    marker = json.loads((demo_root / DEMO_MARKER).read_text())
    assert marker["num_cases"] == [4, 2, 2] and marker["image_size"] == 32 and marker["seed"] == 0


def test_demo_reads_like_oasis(demo_root):
    assert [item["name"] for item in list_oasis_png_split(demo_root, "validate")] == [
        f"case_{c:03d}_slice_{y}.nii.png" for c in (5, 6) for y in range(4)
    ]
    dataset = get_dataset(demo_root, "train", image_size=16)
    assert len(dataset) == 16 and dataset[0]["image"].shape == (1, 16, 16)


def test_demo_is_deterministic_for_a_seed_and_cases_differ(tmp_path, demo_root):
    again = generate_demo_dataset(tmp_path / "again", num_cases=(4, 2, 2), slices_per_case=4, image_size=32)
    assert all_files(again) == all_files(demo_root)
    other_seed = generate_demo_dataset(
        tmp_path / "seed1", num_cases=(4, 2, 2), slices_per_case=4, image_size=32, seed=1
    )
    train = "keras_png_slices_train"
    assert not np.array_equal(
        read(other_seed / train / "case_001_slice_1.nii.png"), read(demo_root / train / "case_001_slice_1.nii.png")
    )
    first, second = (read(demo_root / train / f"case_00{c}_slice_1.nii.png").astype(float) for c in (1, 2))
    assert np.abs(first - second).mean() > 5  # different subjects, not the same brain with noise


def test_demo_intensities_follow_t1_tissue_contrast(tmp_path):
    root = generate_demo_dataset(tmp_path / "demo", num_cases=(3, 1, 1), slices_per_case=5, image_size=96)
    for case in (1, 2, 3):
        for y in range(5):
            image = read(root / "keras_png_slices_train" / f"case_{case:03d}_slice_{y}.nii.png") / 255.0
            labels = read(root / "keras_png_slices_seg_train" / f"seg_{case:03d}_slice_{y}.nii.png")
            assert set(np.unique(labels)) <= {0, 85, 170, 255}
            assert image[labels == 0].max() < 0.35  # skull-stripped: only the blurred brain edge is not black
            assert np.mean(image[labels == 0] == 0) > 0.9
            medians = {level: np.median(image[labels == level]) for level in (85, 170, 255) if np.any(labels == level)}
            assert 0.75 * 0.85 < medians[255] < 0.85 * 1.15  # white matter, allowing for the bias field
            assert 0.40 < medians[170] < 0.62  # grey matter
            if 85 in medians:
                assert 0.08 < medians[85] < 0.32  # CSF
            assert medians[85 if 85 in medians else 170] < medians[170] <= medians[255]


def test_demo_case_is_a_coherent_stack(tmp_path):
    root = generate_demo_dataset(tmp_path / "demo", num_cases=(2, 1, 1), slices_per_case=9, image_size=64)
    for case in (1, 2):
        labels = [read(root / "keras_png_slices_seg_train" / f"seg_{case:03d}_slice_{y}.nii.png") for y in range(9)]
        area = [np.mean(seg > 0) for seg in labels]
        # the cross-section peaks in the middle of the stack and shrinks toward the cerebellum and the vertex
        assert max(area[3:6]) > area[8] * 2 and max(area[3:6]) > area[0] * 2
        # lateral ventricles: most CSF near the centre just above the middle of the stack
        centre = [np.count_nonzero(seg[24:40, 26:38] == 85) for seg in labels]
        assert max(centre[4:6]) > 1.5 * max(centre[0], centre[8])
        # neighbouring slices are similar, distant ones are not
        images = [
            read(root / "keras_png_slices_train" / f"case_{case:03d}_slice_{y}.nii.png") / 255.0 for y in range(9)
        ]
        neighbour = np.abs(images[4] - images[5]).mean()
        assert neighbour < np.abs(images[4] - images[8]).mean() and neighbour < np.abs(images[4] - images[0]).mean()


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="expected a missing or empty folder"):
        generate_demo_dataset(tmp_path, **SMALL)
    with pytest.raises(ValueError, match="num_cases"):
        generate_demo_dataset(tmp_path / "new", num_cases=(2, 0, 1))


def test_ensure_generates_once_then_reuses(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "demo_oasis"
    assert ensure_demo_dataset(root, **SMALL) == root.resolve()
    assert (root / DEMO_MARKER).is_file()
    assert len(list((root / "keras_png_slices_train").iterdir())) == 4
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo_oasis"]  # no staging folders left behind

    def fail(*args, **kwargs):
        raise AssertionError("the demo dataset was generated again")

    monkeypatch.setattr(demo_module, "generate_demo_dataset", fail)
    assert ensure_demo_dataset(root, **SMALL) == root.resolve()


def test_ensure_replaces_a_demo_made_with_other_parameters(tmp_path):
    root = tmp_path / "demo"
    ensure_demo_dataset(root, **SMALL)
    ensure_demo_dataset(root, **{**SMALL, "slices_per_case": 3})
    assert len(list((root / "keras_png_slices_train").iterdir())) == 6
    assert json.loads((root / DEMO_MARKER).read_text())["slices_per_case"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_ensure_fills_an_empty_folder_and_refuses_a_foreign_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ensure_demo_dataset(empty, **SMALL) / DEMO_MARKER).is_file()
    foreign = tmp_path / "my_scans"
    foreign.mkdir()
    (foreign / "scan.nii.gz").write_bytes(b"precious")
    with pytest.raises(DatasetError, match=f"'{foreign}' exists and is not a monai_vqbrain demo dataset"):
        ensure_demo_dataset(foreign, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["scan.nii.gz"]
    with pytest.raises(TypeError, match="image_sise"):
        ensure_demo_dataset(tmp_path / "x", image_sise=32)


def test_ensure_is_safe_when_processes_race(tmp_path):
    root = tmp_path / "demo"
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_demo_dataset(root, **SMALL))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [root.resolve()] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert len(list((root / "keras_png_slices_seg_test").iterdir())) == 2


def test_default_demo_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MONAI_VQBRAIN_DEMO_DIR", raising=False)
    assert default_demo_dir() == Path.home() / ".cache" / "monai_vqbrain" / "demo_oasis"
    monkeypatch.setenv("MONAI_VQBRAIN_DEMO_DIR", str(tmp_path / "elsewhere"))
    assert default_demo_dir() == tmp_path / "elsewhere"


@pytest.fixture
def uncached_template():
    """The template module with its once-per-process template cache empty before and after the test."""
    from monai_vqbrain.data import template as template_module

    template_module.load_brain_template.cache_clear()
    yield template_module
    template_module.load_brain_template.cache_clear()


def test_missing_template_is_one_clear_error_and_writes_nothing(tmp_path, monkeypatch, uncached_template):
    monkeypatch.setattr(uncached_template.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="pip install nilearn"):
        generate_demo_dataset(tmp_path / "demo", **SMALL)
    assert not (tmp_path / "demo").exists()


def test_damaged_template_is_one_clear_error(tmp_path, monkeypatch, uncached_template):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in uncached_template._TEMPLATE_FILES.values():
        (folder / name).write_bytes(b"not a nifti file")
    monkeypatch.setattr(uncached_template, "template_folder", lambda: folder)
    with pytest.raises(DatasetError, match="cannot read the brain template .*mni_icbm152"):
        generate_demo_dataset(tmp_path / "demo", **SMALL)
    assert not (tmp_path / "demo").exists()


def test_no_demo_slice_is_empty(tmp_path):
    # case 38 of seed 0 is a small, low head: its top slice lay above the vertex and came out all black
    root = generate_demo_dataset(tmp_path / "demo", num_cases=(38, 1, 1), slices_per_case=2, image_size=32)
    for split in SPLITS:
        for path in sorted((root / f"keras_png_slices_{split}").iterdir()):
            assert (read(path) > 0).mean() >= 0.015, path.name  # MIN_BRAIN_FRACTION, measured on 64 pixels
    # a slice the brain covers keeps its level: the lower slice of case 38 is the one it always was
    from monai_vqbrain.data.template import brain_covering_positions, draw_subject, load_brain_template

    subject = draw_subject(np.random.default_rng([0, 38]))
    moved = brain_covering_positions(load_brain_template(), subject, np.array([0.0, 0.5, 1.0]), 220.0)
    assert moved[0] == 0.0 and moved[1] == 0.5 and 0.8 < moved[2] < 1.0


def test_generating_the_demo_data_says_how_far_it_is(tmp_path, caplog):
    # issue 25: demo-data generation was one line, then minutes without a timestamped step
    import logging

    with caplog.at_level(logging.INFO, logger="monai_vqbrain.data.demo"):
        generate_demo_dataset(tmp_path / "demo", num_cases=(2, 1, 1), slices_per_case=2, image_size=32)
    steps = [record.getMessage().split(" (")[0] for record in caplog.records if "drawing" in record.getMessage()]
    assert steps == [f"demo data: drawing the {split} split, {count} case(s) of 2 slices"
                     for split, count in (("train", 2), ("validate", 1), ("test", 1))]
