"""Generating brains: the bundle's generating workflow, its samples (PNG and NIfTI), determinism, the grid, and the
clear errors of a missing, mismatched or foreign checkpoint and of an output folder it would overwrite."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    GENERATE,
    NUM_SAMPLES,
    TINY_NETWORK,
    TINY_OVERRIDES,
    TRAIN,
    copy_models,
    generate,
    tiny_vqvae,
    user_error,
)
from nifti_oracle import load_nifti_slices
from PIL import Image

from monai_vqbrain.errors import CheckpointError, DatasetError, OutputPathError, OutputWriteError, SettingError
from monai_vqbrain.networks import VQVAE, GatedPixelCNN
from monai_vqbrain.prior import (
    GENERATION_METRICS_KEYS,
    check_real_splits,
    decode_codes,
    load_prior,
    load_vqvae,
    position_map,
    prior_network_settings,
    sample_affine,
    sample_class_labels,
)
from monai_vqbrain.utils import read_model, save_model
from monai_vqbrain.workflows import check_settings

pytestmark = pytest.mark.usefixtures("one_thread")


# the classifier and texture two-sample tests' entries, for their three comparisons, in the order they are written
TWO_SAMPLE_KEYS = (
    *(
        f"classifier_{key}_{comparison}{suffix}"
        for comparison in ("generated_vs_test", "train_vs_test", "reconstructed_vs_test")
        for key, suffix in (
            ("auc", ""), ("auc", "_std"), ("auc", "_ci95"), ("auc", "_folds"), ("dprime", ""),
            ("dprime", "_ci95"), ("images_per_side", ""),
        )
    ),
    *(
        f"texture_{key}_{comparison}{suffix}"
        for comparison in ("generated_vs_test", "train_vs_test", "reconstructed_vs_test")
        for key, suffix in (("auc", ""), ("auc", "_ci95"), ("dprime", ""), ("dprime", "_ci95"))
    ),
)
METRIC_KEYS = (
    "prior_val_bits_per_code",
    "prior_val_accuracy",
    "prior_best_epoch",
    "prior_uniform_bits_per_code",
    "fd_feature_space",
    "fd_generated_vs_test",
    "fd_train_vs_test",
    "fd_train_subset_vs_test",
    "fd_reconstructed_test_vs_test",
    "diversity_ssim_generated",
    "diversity_ssim_test",
    "diversity_ssim_reconstructed_test",
    "memorisation_ssim_mean",
    "memorisation_ssim_max",
    "memorisation_ssim_test_mean",
    "memorisation_ssim_reconstructed_test_mean",
    "memorisation_per_sample",
    "foreground_fraction_generated",
    "foreground_fraction_test",
    "fd_generated_vs_test_ci95",
    "diversity_ssim_generated_ci95",
    "memorisation_ssim_mean_ci95",
    "classifier",
    "classifier_notes",
    *TWO_SAMPLE_KEYS,
    "blank_samples", "precision_generated", "recall_generated", "precision_generated_ci95", "recall_generated_ci95",
)


# generation_metrics.json's entries in their order, as the monolithic generator before the workflow wrote them
REPORT_KEYS = (
    "num_samples", "seed", "temperature", "image_size", "code_size", "sample_files", "sample_class_labels",
    "sampling_seconds", "prior_checkpoint", "vqvae_checkpoint", "metrics_status", "prior_best_epoch", "prior_val_bits_per_code",
    "prior_val_accuracy", "prior_uniform_bits_per_code", "prior_conditioning", "num_train_images", "num_test_images",
    "num_test_subset_images", "fd_feature_space", "fd_generated_vs_test", "fd_generated_vs_test_ci95",
    "fd_train_vs_test", "fd_train_subset_vs_test", "fd_reconstructed_test_vs_test", "diversity_ssim_generated",
    "diversity_ssim_generated_ci95", "diversity_ssim_test", "diversity_ssim_reconstructed_test",
    "memorisation_ssim_mean", "memorisation_ssim_mean_ci95", "memorisation_ssim_max", "memorisation_ssim_test_mean",
    "memorisation_ssim_reconstructed_test_mean", "memorisation_candidates", "blank_samples", "memorisation_per_sample",
    "precision_recall_k", "precision_generated", "recall_generated", "precision_generated_ci95", "recall_generated_ci95",
    "precision_train_subset", "recall_train_subset", "foreground_fraction_generated", "foreground_fraction_test",
    "classifier",
    *TWO_SAMPLE_KEYS,
    "classifier_notes",
)


# the entries with the prior's results alone (generation_metrics false)
SAMPLING_REPORT_KEYS = REPORT_KEYS[: REPORT_KEYS.index("prior_conditioning") + 1]


def test_generating_writes_samples_grid_and_metrics(generated):
    pngs = sorted(generated.glob("sample_*.png"))
    niftis = sorted(generated.glob("sample_*.nii.gz"))
    assert [p.name for p in pngs] == [f"sample_{i:03d}.png" for i in range(NUM_SAMPLES)]
    assert len(niftis) == NUM_SAMPLES and (generated / "grid.png").stat().st_size > 0
    with Image.open(generated / "nearest_training_slices.png") as figure:  # samples beside their nearest slices
        assert figure.format == "PNG" and figure.size[0] > figure.size[1]
    metrics = json.loads((generated / "generation_metrics.json").read_text())
    assert tuple(metrics) == REPORT_KEYS
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["sample_files"] == [p.name for p in pngs]
    assert [entry["sample"] for entry in metrics["memorisation_per_sample"]] == metrics["sample_files"]
    assert metrics["num_samples"] == NUM_SAMPLES and metrics["prior_best_epoch"] in (1, 2)
    assert metrics["prior_uniform_bits_per_code"] == pytest.approx(5.0)
    assert 0.0 <= metrics["prior_val_accuracy"] <= 1.0 and metrics["prior_val_bits_per_code"] > 0
    for key in ("fd_generated_vs_test", "fd_train_vs_test", "fd_train_subset_vs_test", "fd_reconstructed_test_vs_test"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0, key
    assert len(metrics["memorisation_per_sample"]) == NUM_SAMPLES
    scores = [entry["ssim"] for entry in metrics["memorisation_per_sample"]]
    assert metrics["memorisation_ssim_max"] == pytest.approx(max(scores))
    assert all(entry["nearest_train"].startswith("case_") for entry in metrics["memorisation_per_sample"])
    assert metrics["num_test_images"] == 8 and metrics["num_train_images"] == 16
    assert len(metrics["sample_class_labels"]) == NUM_SAMPLES
    low, high = metrics["fd_generated_vs_test_ci95"]
    assert 0 <= low <= high
    for key in ("diversity_ssim_generated", "memorisation_ssim_mean"):
        low, high = metrics[f"{key}_ci95"]
        assert low <= metrics[key] <= high, key
    # 4 samples, and the demo's test split holds 2 subjects: too few for 5 (grouped) folds, so no AUC, and the
    # notes say why
    assert metrics["classifier"]["enabled"] and metrics["classifier"]["num_test_pool_images"] == 8
    assert metrics["classifier_auc_generated_vs_test"] is None and len(metrics["classifier_notes"]) == 3
    assert all(re.search("too few images for 5-fold|fewer than the 5 folds", n) for n in metrics["classifier_notes"])
    # not measured is null, not 0 images beside a note that counts them (issue 25)
    assert metrics["classifier_images_per_side_generated_vs_test"] is None
    # every key the run wrote is documented, from the one description the docs' table is generated from
    assert [key for key in metrics if key not in GENERATION_METRICS_KEYS] == []
    assert metrics["metrics_status"] == "measured"


def test_generated_png_and_nifti_hold_the_same_image(generated):
    png = np.asarray(Image.open(generated / "sample_001.png"), dtype=np.float32) / 255.0
    assert png.shape == (32, 32)
    volume = nib.load(generated / "sample_001.nii.gz").get_fdata(dtype=np.float32)
    assert volume.shape == (32, 32, 1)
    np.testing.assert_allclose(np.rot90(volume[:, :, 0]), png, atol=0.5 / 255 + 1e-6)
    # the package's own NIfTI reader shows it the way the PNG shows it (up to its per-volume intensity scaling)
    (item,) = load_nifti_slices([generated / "sample_001.nii.gz"], min_foreground=0.0)
    assert np.corrcoef(item["image"][0].ravel(), png.ravel())[0, 1] > 0.99


def _world_of_voxel(image: nib.Nifti1Image, voxel) -> np.ndarray:
    return nib.affines.apply_affine(image.affine, voxel)


def test_generated_nifti_has_mm_pixels_in_ras_centred_on_the_origin(generated, prior_root, demo_root, tmp_path):
    image = nib.load(generated / "sample_000.nii.gz")
    # default: 1 mm pixels, as both the sform and the qform (what ITK/FSL read) say, in RAS voxel order
    assert image.header.get_zooms() == (1.0, 1.0, 1.0) and image.header.get_xyzt_units()[0] == "mm"
    assert int(image.header["sform_code"]) > 0 and int(image.header["qform_code"]) > 0
    np.testing.assert_allclose(image.get_qform(), image.get_sform())
    assert "".join(nib.aff2axcodes(image.affine)) == "RAS"
    np.testing.assert_allclose(_world_of_voxel(image, [15.5, 15.5, 0]), [0.0, 0.0, 0.0])  # centre of the 32x32 slice
    # another pixel size (the training images' one, when known) scales the affine and keeps the image
    copy_models(prior_root, tmp_path)
    out = generate(tmp_path, demo_root, num_samples=2, sample_pixel_spacing=0.5)
    half = nib.load(out / "sample_001.nii.gz")
    assert half.header.get_zooms() == (0.5, 0.5, 0.5) and "".join(nib.aff2axcodes(half.affine)) == "RAS"
    np.testing.assert_allclose(_world_of_voxel(half, [31, 31, 0]) - _world_of_voxel(half, [0, 0, 0]), [15.5, 15.5, 0])
    png = np.asarray(Image.open(out / "sample_001.png"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(np.rot90(half.get_fdata()[:, :, 0]), png, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="pixel_spacing"):
        sample_affine(32, 0.0)
    user_error(SettingError, "sample_pixel_spacing", check_settings, {"sample_pixel_spacing": -1.0})


def _save_sample(folder: Path, image: torch.Tensor) -> dict:
    """generate.json's saving of one sample ``(1, S, S)`` as ``sample_000.png`` and ``sample_000.nii.gz``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "generate.json")])
    parser["generation_dir"] = str(folder)
    meta = {"filename_or_obj": "sample_000", "affine": torch.as_tensor(sample_affine(image.shape[-1]))}
    return parser.get_parsed_content("postprocessing")({"pred": image, "pred_meta_dict": meta})


def test_samples_are_written_atomically_with_the_umask(tmp_path, monkeypatch):
    image = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    previous = os.umask(0o027)
    try:
        _save_sample(tmp_path / "out", image)
    finally:
        os.umask(previous)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample_000.nii.gz", "sample_000.png"]
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in (tmp_path / "out").iterdir())
    # uint8, rounded to the nearest level; the NIfTI holds the float image
    png = np.asarray(Image.open(tmp_path / "out" / "sample_000.png"))
    np.testing.assert_array_equal(png, np.rint(image[0].numpy() * 255).astype(np.uint8))
    volume = nib.load(tmp_path / "out" / "sample_000.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_allclose(np.rot90(volume[:, :, 0]), image[0].numpy(), atol=1e-6)
    # a full disk is one error naming the file, and leaves neither a partial file nor a temporary one
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", full_disk)
    user_error(OutputWriteError, "sample_000.nii.gz': No space left on device", _save_sample, tmp_path / "full", image)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["sample_000.png"]


def test_generating_is_deterministic_for_a_seed(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    first = generate(tmp_path, demo_root, seed=3, generation_dir=str(tmp_path / "a"))
    again = generate(tmp_path, demo_root, seed=3, generation_dir=str(tmp_path / "b"))
    other = generate(tmp_path, demo_root, seed=4, generation_dir=str(tmp_path / "c"))
    names = [f"sample_{i:03d}.png" for i in range(NUM_SAMPLES)]
    assert [(first / n).read_bytes() for n in names] == [(again / n).read_bytes() for n in names]
    assert [(first / n).read_bytes() for n in names] != [(other / n).read_bytes() for n in names]
    # greedy sampling (temperature 0) picks the most likely code: the seed no longer matters
    greedy = [generate(tmp_path, demo_root, seed=s, temperature=0.0, generation_dir=str(tmp_path / f"t{s}")) for s in (3, 4)]
    assert [(greedy[0] / n).read_bytes() for n in names] == [(greedy[1] / n).read_bytes() for n in names]
    metrics = json.loads((greedy[0] / "generation_metrics.json").read_text())
    assert metrics["temperature"] == 0.0 and metrics["seed"] == 3


def test_generating_draws_the_priors_samples_whatever_the_batch_size(prior_root, demo_root, tmp_path):
    # the samples the prior draws from a generator seeded with the seed, as one call (what generating wrote before
    # it was a workflow of batches): each sample keeps its own seed, label and conditioning map in every batching
    copy_models(prior_root, tmp_path)
    models = tmp_path / "models"
    runs = [generate(tmp_path, demo_root, seed=5, num_samples=5, generation_dir=str(tmp_path / "all"))]
    runs.append(generate(tmp_path, demo_root, seed=5, num_samples=5, sample_batch_size=2,
                         generation_dir=str(tmp_path / "twos")))
    prior, metadata = load_prior(models / "prior.pt")
    code_size = tuple(metadata["code_size"])
    frequencies = int(metadata["position_frequencies"])
    labels = sample_class_labels(metadata, 5)
    codes = prior.sample(5, code_size, generator=torch.Generator().manual_seed(5), class_labels=labels,
                         cond_map=position_map(code_size, frequencies).expand(5, -1, -1, -1) if frequencies else None)
    expected = decode_codes(tiny_vqvae(models / "model.pt"), codes)[:, 0].numpy()
    for out in runs:
        report = json.loads((out / "generation_metrics.json").read_text())
        assert tuple(report) == SAMPLING_REPORT_KEYS and report["sample_class_labels"] == labels.tolist()
        assert report["metrics_status"] == "not measured (--generation_metrics false)"
        for index in range(5):
            volume = nib.load(out / f"sample_{index:03d}.nii.gz").get_fdata(dtype=np.float32)[:, :, 0]
            np.testing.assert_allclose(np.rot90(volume), expected[index], atol=1e-6)
            png = np.asarray(Image.open(out / f"sample_{index:03d}.png"))
            assert png.dtype == np.uint8  # rounded to the nearest level (rounding noise of another batching: one)
            np.testing.assert_allclose(png, np.rint(expected[index].clip(0, 1) * 255), atol=1)


def test_generate_workflow_has_every_required_property(prior_root, demo_root, tmp_path, caplog):
    # MONAI's inference-bundle properties: the sample requests are the dataset, the prior-sampling inferer the
    # inferer; the evaluator (what tracking attaches to) is the metrics evaluator over test#dataset
    from monai.bundle import create_workflow
    from monai.engines import Evaluator, SupervisedEvaluator

    copy_models(prior_root, tmp_path)
    workflow = create_workflow(config_file=GENERATE, workflow_type="infer", bundle_root=str(tmp_path),
                               dataset_dir=str(demo_root), num_samples=2, **TINY_OVERRIDES)
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, Evaluator) and not isinstance(workflow.evaluator, SupervisedEvaluator)
    assert len(workflow.dataset) == 2
    # the bundle's logging.conf has replaced the root handlers (and with them caplog's): listen on our logger itself
    package_logger = logging.getLogger("monai_vqbrain")
    package_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="monai_vqbrain"):
            workflow.run()
    finally:
        package_logger.removeHandler(caplog.handler)
    report = json.loads((tmp_path / "outputs" / "generated" / "generation_metrics.json").read_text())
    assert tuple(report) == REPORT_KEYS and workflow.evaluator.state.metrics["num_test_images"] == 8
    # the minute of metric computation is announced, and its headline numbers end in the console
    assert "measuring 2 samples against 8 real test and" in caplog.text
    assert "classifier two-sample tests)" in caplog.text and "only 2 samples: a classifier AUC" in caplog.text
    assert "generation: classifier AUC generated vs test" in caplog.text and "all metrics in" in caplog.text
    # and its progress: each stage, with the time so far, and each classifier test
    stages = [line for line in caplog.text.splitlines() if "measuring (" in line]
    assert [line.split("measuring (")[1].split(",")[0] for line in stages] == ["1/4", "2/4", "3/4", "4/4"]
    assert "classifier two-sample test 3/3: reconstructed vs test" in caplog.text


def test_generating_without_prior_is_a_clear_error(trained_bundle, demo_root, tmp_path):
    copy_models(trained_bundle, tmp_path)
    user_error(CheckpointError, "train the prior first", generate, tmp_path, demo_root)


@pytest.mark.parametrize("kind", ["folder", "device", "dangling link"])
def test_a_checkpoint_path_that_is_no_regular_file_is_named_as_such_not_as_missing(tmp_path, kind):
    # issue 25: --prior_checkpoint <a folder> or /dev/zero said "does not exist; train the prior first"
    from monai_vqbrain.prior import read_prior_settings, vqvae_fingerprint
    from monai_vqbrain.utils import load_checkpoint

    if kind == "folder":
        path, expected = tmp_path, "is a folder; expected the checkpoint file itself"
    elif kind == "device":
        path, expected = Path("/dev/zero"), "is not a regular file (a FIFO, socket or device)"
    else:
        path, expected = tmp_path / "prior.pt", "is a symbolic link to"
        path.symlink_to(tmp_path / "gone.pt")
    for load in (read_prior_settings, vqvae_fingerprint, load_checkpoint,
                 lambda p: load_vqvae(VQVAE(spatial_dims=2, in_channels=1, out_channels=1, **TINY_NETWORK), p)):
        error = user_error(CheckpointError, expected, load, path)
        assert "train" not in str(error) and f"'{path}'" in str(error)


def test_generating_with_checkpoint_of_another_architecture_is_clear(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    models = tmp_path / "models"
    # the VQ-VAE's checkpoint given as the prior
    user_error(CheckpointError, "not a prior checkpoint", generate, tmp_path, demo_root,
                       prior_checkpoint=str(models / "model.pt"))
    # weights of another architecture than the metadata records
    state, metadata = read_model(models / "prior.pt")
    metadata["network_settings"]["channels"] = 16
    save_model(models / "other_prior.pt", state, metadata)
    user_error(CheckpointError, "different network", generate, tmp_path, demo_root,
                       prior_checkpoint=str(models / "other_prior.pt"))
    # generate.json's prior_def set to other settings than the checkpoint records
    user_error(CheckpointError, "records channels=8 (configured: 16): set prior_def#channels", generate, tmp_path, demo_root,
               **{"prior_def#channels": 16})
    # a VQ-VAE with another codebook
    user_error(CheckpointError, "different network", generate, tmp_path, demo_root,
                       **{"network_def#num_embeddings": 64})


def test_prior_of_another_codebook_is_named_as_such(prior_root):
    # a configured prior_def over the new VQ-VAE's codebook: the message names the VQ-VAE, not a prior_def key
    other = VQVAE(**{**TINY_NETWORK, "num_embeddings": 64})
    prior = load_prior(prior_root / "models" / "prior.pt")[0]
    configured = GatedPixelCNN(**{**prior_network_settings(prior), "num_embeddings": 64})
    user_error(CheckpointError, "models 32 codes but the VQ-VAE configured here has num_embeddings=64",
               load_prior, prior_root / "models" / "prior.pt", vqvae=other, network=configured)


def test_generating_after_the_vqvae_changed_is_a_clear_error(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    state, metadata = read_model(tmp_path / "models" / "model.pt")
    save_model(tmp_path / "models" / "model.pt", state, {**metadata, "epoch": 99})  # retrained: other bytes
    user_error(CheckpointError, "another VQ-VAE", generate, tmp_path, demo_root)


def test_generating_does_not_replace_earlier_output_without_overwrite(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    out = generate(tmp_path, demo_root, num_samples=3, seed=1)
    mine = out / "notes.txt"
    mine.write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    user_error(OutputPathError, "--overwrite true", generate, tmp_path, demo_root, num_samples=2, seed=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    generate(tmp_path, demo_root, num_samples=2, seed=2, overwrite=True)
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_000.png", "sample_001.png"]
    assert mine.read_text() == "mine"


def test_an_overwriting_run_leaves_no_figure_of_the_earlier_samples(generated, demo_root, tmp_path):
    # the earlier run measured its samples (nearest_training_slices.png); this one only samples, over it
    shutil.copytree(generated.parents[1] / "models", tmp_path / "models")
    out = tmp_path / "outputs" / "generated"
    shutil.copytree(generated, out)
    assert (out / "nearest_training_slices.png").is_file()
    generate(tmp_path, demo_root, num_samples=2, overwrite=True)
    assert not (out / "nearest_training_slices.png").exists()
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_000.png", "sample_001.png"]


def test_missing_real_data_is_refused_before_anything_is_sampled(prior_root, tmp_path):
    copy_models(prior_root, tmp_path)
    user_error(DatasetError, "does not exist", generate, tmp_path, tmp_path / "no_such_data", generation_metrics=True)
    empty = tmp_path / "empty"
    for split in ("train", "validate", "test"):
        (empty / f"keras_png_slices_{split}").mkdir(parents=True)
    user_error(DatasetError, "", generate, tmp_path, empty, generation_metrics=True)  # an empty split
    assert not (tmp_path / "outputs" / "generated").exists() or not any((tmp_path / "outputs" / "generated").iterdir())
    user_error(DatasetError, "holds no slices", check_real_splits, [], [{"image": "x"}])


def test_bad_sample_class_labels_are_one_setting_error(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    error = user_error(SettingError, "sample_class_labels must lie in [0, ", generate, tmp_path, demo_root,
                       sample_class_labels=[99])
    assert "99" in str(error)
    user_error(SettingError, "one label or 4 labels", generate, tmp_path, demo_root, sample_class_labels=[0, 1])


def test_grid_says_which_end_is_the_base_of_the_brain(tmp_path, monkeypatch):

    from monai_vqbrain.prior import generation_handlers as handlers_module

    drawn = {}
    monkeypatch.setattr(handlers_module, "plot_sample_grid",
                        lambda images, path, titles, heading=None: drawn.update(titles=titles, heading=heading))
    conditioning = {"type": "slice_position", "num_bins": 4, "slice_index_range": [0, 15], "class_counts": [1, 1, 1, 1]}
    samples = SimpleNamespace(images=torch.rand(4, 1, 8, 8), names=[f"sample_{i:03d}.png" for i in range(4)],
                              labels=torch.arange(4))
    handlers_module.SampleGrid(samples, {"conditioning": conditioning}, tmp_path)(None)
    assert drawn["heading"] == "by slice position: brain base (slice 0, top left) to vertex (slice 15, bottom right)"
    assert drawn["titles"][0] == "sample_000\nslices 0-3 of 0-15"


def test_the_heading_of_a_16_sample_grid_is_one_line(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from monai_vqbrain.prior.figures import plot_sample_grid

    drawn, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kwargs: drawn.append(text) or suptitle(self, text, **kwargs))
    heading = "by slice position: brain base (slice 100, top left) to vertex (slice 200, bottom right)"
    plot_sample_grid(torch.rand(16, 1, 8, 8), tmp_path / "grid.png", [f"sample_{i:03d}" for i in range(16)], heading=heading)
    assert drawn == [heading] and (tmp_path / "grid.png").stat().st_size > 0
