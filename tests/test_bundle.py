"""The training and evaluating bundle workflows, run as a user runs them, on tiny data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO_ROOT, TRAIN, run_bundle, user_error

from monai_vqbrain.errors import CheckpointError, DatasetError, ImageFileError, OutputPathError
from monai_vqbrain.utils import read_model_metadata

EVALUATE = [TRAIN, str(CONFIGS / "evaluate.json")]


def test_training_writes_checkpoints_and_history(trained_bundle):
    models = trained_bundle / "models"
    assert (models / "model.pt").is_file() and (models / "last.pt").is_file()
    best = torch.load(models / "model.pt", weights_only=True)
    metadata = read_model_metadata(models / "model.pt")
    assert metadata["image_size"] == 32 and metadata["num_embeddings"] == 32
    assert "quantizer.embedding" in best and "model" not in best and "metadata" not in best
    history = json.loads((models / "training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for key in ("train_loss", "train_reconstruction", "train_vq", "train_codebook", "train_commitment",
                "train_perplexity", "train_codebook_usage", "val_ssim", "val_psnr"):
        assert key in history[-1], key
    record = history[-1]
    assert record["epoch_seconds"] > 0
    assert record["train_loss"] == pytest.approx(record["train_reconstruction"] + record["train_vq"], rel=1e-4)
    assert (trained_bundle / "outputs" / "tensorboard").is_dir()


def test_training_shows_a_validation_image_and_its_reconstruction_in_tensorboard(trained_bundle):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    events = EventAccumulator(str(trained_bundle / "outputs" / "tensorboard"), size_guidance={IMAGES: 0}).Reload()
    images = {tag: events.Images(tag) for tag in events.Tags()[IMAGES]}
    assert set(images) == {"input_0_HW_0", "output_HW_0"}, sorted(images)
    for tag, records in images.items():
        assert [record.step for record in records] == [1, 2], tag  # one per validation epoch
        assert (records[-1].width, records[-1].height) == (32, 32), tag


def test_training_sees_random_crops_and_validation_whole_slices(demo_root, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(demo_root), "image_size": 32,
                   "train_crop_size": 16})
    train, validate = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("validate#dataset")
    crops = [train[0]["image"] for _ in range(8)]
    assert all(crop.shape == (1, 16, 16) for crop in crops)
    assert any(not torch.equal(crops[0], crop) for crop in crops[1:]), "a new random crop on every access"
    assert validate[0]["image"].shape == (1, 32, 32)
    parser["train_crop_size"] = None  # no cropping: whole slices
    assert parser.get_parsed_content("train#dataset", lazy=False)[0]["image"].shape == (1, 32, 32)


def test_the_configs_declare_every_preprocessing_step(demo_root, nifti_root, tmp_path):
    from monai.bundle import ConfigParser
    from monai.data import CacheDataset
    from monai.transforms import Compose, MapTransform

    from monai_vqbrain.data import get_dataset

    parser = ConfigParser()
    parser.read_config([TRAIN, *EVALUATE[1:]])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(nifti_root), "image_size": 32,
                   "train_crop_size": 16})
    preprocessing = parser.get_parsed_content("preprocessing")
    assert isinstance(preprocessing, Compose) and all(isinstance(t, MapTransform) for t in preprocessing.transforms)
    for split in ("train", "validate", "test"):
        dataset = parser.get_parsed_content(f"{split}#dataset")
        assert isinstance(dataset, CacheDataset) and dataset.data == parser.get_parsed_content(f"{split}#datalist")
    # validation and evaluation share the one preprocessing; training appends the random crop to the same steps
    assert parser.get_parsed_content("validate#dataset").transform is preprocessing
    assert parser.get_parsed_content("test#dataset").transform is preprocessing
    train_steps = parser.get_parsed_content("train#preprocessing").transforms
    assert train_steps[:-1] == preprocessing.transforms and type(train_steps[-1]).__name__ == "RandSpatialCropd"
    # NIfTI volumes become (volume, slice) items whose images are those of the Python entry point
    validate = parser.get_parsed_content("validate#dataset")
    assert all("slice_index" in item for item in validate.data)
    expected = get_dataset(nifti_root, "validate", image_size=32)
    assert len(validate) == len(expected)
    torch.testing.assert_close(validate[0]["image"], expected[0]["image"])
    assert validate[0]["name"] == expected[0]["name"]


def test_evaluating_writes_report(trained_bundle, demo_root, tmp_path):
    outputs = tmp_path / "outputs"
    run_bundle("evaluating", EVALUATE, bundle_root=str(trained_bundle), dataset_dir=str(demo_root), output_dir=str(outputs))
    metrics = json.loads((outputs / "metrics.json").read_text())
    for key in ("ssim_mean", "ssim_std", "ssim_min", "psnr_mean", "n", "image_size"):
        assert key in metrics, key
    test_files = list((demo_root / "keras_png_slices_test").glob("*.png"))
    assert metrics["n"] == len(test_files) and metrics["image_size"] == 32
    assert -1.0 <= metrics["ssim_min"] <= metrics["ssim_mean"] <= 1.0
    rows = (outputs / "per_image_metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "name,ssim,psnr,error" and len(rows) == len(test_files) + 1
    assert {row.split(",")[0] for row in rows[1:]} == {f.name for f in test_files}
    assert (outputs / "reconstructions.png").stat().st_size > 0
    assert (outputs / "loss_curves.png").stat().st_size > 0


def test_evaluating_does_not_replace_an_earlier_report_unless_asked(trained_bundle, demo_root, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "metrics.json").write_text("an earlier report")
    user_error(OutputPathError, f"'{outputs / 'metrics.json'}' already exists", run_bundle, "evaluating", EVALUATE,
               bundle_root=str(trained_bundle), dataset_dir=str(tmp_path / "not_read"), output_dir=str(outputs))
    assert (outputs / "metrics.json").read_text() == "an earlier report"
    run_bundle("evaluating", EVALUATE, bundle_root=str(trained_bundle), dataset_dir=str(demo_root),
               output_dir=str(outputs), overwrite=True)
    assert json.loads((outputs / "metrics.json").read_text())["n"] > 0


def test_report_leaves_non_finite_scores_empty_with_the_reason(tmp_path, caplog):
    """A perfect reconstruction has an infinite PSNR: the CSV must not show it as a number."""
    import csv

    from ignite.engine import Engine

    from monai_vqbrain.handlers import ReconstructionReportHandler

    target = torch.rand(2, 1, 32, 32)
    prediction = target.clone()
    prediction[1] = (prediction[1] + 0.1).clamp(0, 1)
    engine = Engine(lambda engine, batch: {"pred": prediction, "label": target})
    ReconstructionReportHandler(tmp_path, image_size=32, num_examples=1).attach(engine)
    with caplog.at_level("INFO", logger="monai_vqbrain.handlers.reconstruction_report"):
        engine.run([{"name": ["exact", "noisy"]}], max_epochs=1)
    assert "evaluated 2 images at 32x32: SSIM" in caplog.text, "the summary reaches the console"
    rows = {row["name"]: row for row in csv.DictReader((tmp_path / "per_image_metrics.csv").open())}
    assert rows["exact"]["psnr"] == "" and "psnr is infinite" in rows["exact"]["error"]
    assert float(rows["exact"]["ssim"]) == pytest.approx(1.0)
    assert float(rows["noisy"]["psnr"]) > 0 and rows["noisy"]["error"] == ""
    # SSIM and PSNR as the log prints them: 4 decimals, in the CSV as on the console
    assert re.fullmatch(r"\d\.\d{4}", rows["noisy"]["ssim"]) and re.fullmatch(r"\d+\.\d{4}", rows["noisy"]["psnr"])
    assert json.loads((tmp_path / "metrics.json").read_text())["psnr_mean"] == pytest.approx(float(rows["noisy"]["psnr"]))


def test_loss_curves_say_what_they_show(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from monai_vqbrain.handlers.reconstruction_report import plot_loss_curves

    drawn, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kwargs: drawn.append(text) or suptitle(self, text, **kwargs))
    history = [{"epoch": epoch, "train_loss": 1.0 / epoch, "train_reconstruction": 0.9 / epoch, "train_vq": 0.1,
                "val_ssim": 0.5 + 0.1 * epoch} for epoch in (1, 2, 3)]
    assert plot_loss_curves(history, tmp_path / "loss_curves.png")
    assert drawn == ["VQ-VAE training: 3 epoch(s)"]


def test_reconstruction_figure_spreads_from_best_to_worst_with_the_checkpoint_in_the_title(tmp_path, monkeypatch):
    from ignite.engine import Engine

    from monai_vqbrain.handlers import ReconstructionReportHandler
    from monai_vqbrain.handlers import reconstruction_report as report

    torch.manual_seed(0)
    target = torch.rand(12, 1, 32, 32)
    # noise grows with the index: image 0 is the best reconstruction, image 11 the worst
    prediction = (target + torch.randn_like(target) * torch.linspace(0.01, 0.5, 12).view(-1, 1, 1, 1)).clamp(0, 1)
    batches = [{"name": [f"image_{i}" for i in range(b, b + 4)], "index": range(b, b + 4)} for b in (0, 4, 8)]
    engine = Engine(lambda engine, batch: {"pred": prediction[list(batch["index"])],
                                           "label": target[list(batch["index"])]})
    drawn = {}
    plot = report.plot_reconstructions
    monkeypatch.setattr(report, "plot_reconstructions",
                        lambda examples, title, path: drawn.update(examples=examples, title=title) or plot(examples, title, path))
    ReconstructionReportHandler(tmp_path, image_size=32, num_examples=3,
                                extra_metadata={"checkpoint": "runs/a/models/model.pt"}).attach(engine)
    engine.run(batches, max_epochs=1)
    names = [example[2] for example in drawn["examples"]]
    assert names[0] == "image_0" and names[-1] == "image_11" and len(names) == 3, names
    scores = [example[3] for example in drawn["examples"]]
    assert scores == sorted(scores, reverse=True)
    mean_ssim = json.loads((tmp_path / "metrics.json").read_text())["ssim_mean"]
    # the checkpoint's folder and name, not its whole path (metrics.json keeps that)
    assert drawn["title"].startswith(f"models/model.pt: mean SSIM {mean_ssim:.3f} over 12 images")
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
    # no figure examples asked: the report is written without the figure
    without_figure = Engine(engine._process_function)
    ReconstructionReportHandler(tmp_path / "none", image_size=32, num_examples=0).attach(without_figure)
    without_figure.run(batches, max_epochs=1)
    assert (tmp_path / "none" / "metrics.json").is_file() and not (tmp_path / "none" / "reconstructions.png").exists()


def test_existing_checkpoints_are_not_overwritten_unless_asked(trained_bundle, demo_root):
    before = (trained_bundle / "models" / "model.pt").read_bytes()
    user_error(CheckpointError, "already exists", run_bundle, "training", TRAIN,
                       bundle_root=str(trained_bundle), dataset_dir=str(demo_root), max_epochs=1)
    assert (trained_bundle / "models" / "model.pt").read_bytes() == before


def test_resume_continues_from_last_checkpoint(trained_bundle, demo_root, tmp_path):
    bundle_root = tmp_path / "resumed"
    shutil.copytree(trained_bundle / "models", bundle_root / "models")
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), max_epochs=3, resume=True)
    history = json.loads((bundle_root / "models" / "training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    last = torch.load(bundle_root / "models" / "last.pt", weights_only=True)
    assert last["metadata"]["epoch"] == 3


def test_resume_without_checkpoint_is_an_error(tmp_path, demo_root):
    user_error(CheckpointError, "last.pt", run_bundle, "training", TRAIN, bundle_root=str(tmp_path),
                       dataset_dir=str(demo_root), max_epochs=1, resume=True)


def test_missing_dataset_dir_is_an_error_not_demo_data(tmp_path):
    missing = tmp_path / "no_such_folder"
    user_error(DatasetError, str(missing), run_bundle, "training", TRAIN, bundle_root=str(tmp_path),
                       dataset_dir=str(missing), max_epochs=1)
    assert not (tmp_path / "data").exists(), "no demo data may be generated for a user-given path"


def test_empty_dataset_dir_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    user_error(DatasetError, str(empty), run_bundle, "training", TRAIN, bundle_root=str(tmp_path),
                       dataset_dir=str(empty), max_epochs=1)


def test_corrupt_image_is_named(tmp_path, demo_root):
    dataset = tmp_path / "dataset"
    shutil.copytree(demo_root, dataset)
    corrupt = dataset / "keras_png_slices_train" / "case_000_slice_0.nii.png"
    corrupt.write_bytes(b"this is not a png")
    user_error(ImageFileError, corrupt.name, run_bundle, "training", TRAIN, bundle_root=str(tmp_path),
                       dataset_dir=str(dataset), max_epochs=1)


def test_evaluating_with_checkpoint_of_other_network_is_clear(trained_bundle, demo_root):
    user_error(CheckpointError, "different network", run_bundle, "evaluating", EVALUATE,
                       bundle_root=str(trained_bundle), dataset_dir=str(demo_root),
                       **{"network_def#num_embeddings": 64})


def test_cli_reports_bad_input_in_one_line(tmp_path):
    missing = tmp_path / "missing_dataset"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN,
               "--bundle_root", str(tmp_path), "--dataset_dir", str(missing)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MONAI_VQBRAIN_TRACEBACK": ""})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"error: dataset_dir '{missing}' does not exist" in result.stderr


def test_command_line_booleans_are_parsed_not_truthy(tmp_path, demo_root):
    # Fire passes `--resume false` as the string 'false'; it must not switch resuming on
    run_bundle("training", TRAIN, bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=1,
               resume="false", overwrite="False", amp="false", progress="false")
    assert (tmp_path / "models" / "last.pt").is_file()
    user_error(ValueError, "resume must be true or false", run_bundle, "training", TRAIN,
                       bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=1, resume="maybe")
