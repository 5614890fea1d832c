"""The PixelCNN prior and the generative workflow: code caching, prior training, generation and its metrics."""

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
from conftest import CONFIGS, TINY_NETWORK, TINY_OVERRIDES, TRAIN, brain_like_slice, run_bundle, user_error
from monai.metrics import FIDMetric
from nifti_oracle import load_nifti_slices
from PIL import Image
from torch.utils.data import DataLoader

from monai_vqbrain.data import get_dataset
from monai_vqbrain.errors import CheckpointError, DatasetError, OutputPathError, OutputWriteError, SettingError
from monai_vqbrain.networks import VQVAE, GatedPixelCNN
from monai_vqbrain.prior import (
    GENERATION_METRICS_KEYS,
    CodeAccuracyMetric,
    CodeDataset,
    CodeNLLMetric,
    GenerationQuality,
    GenerationReport,
    PriorPrepareBatch,
    SlicePositionLabels,
    bootstrap_frechet_interval,
    bootstrap_mean_interval,
    check_real_splits,
    decode_codes,
    file_sha256,
    frechet_distance,
    generation_summary,
    knn_precision_recall,
    load_or_encode_codes,
    load_prior,
    load_vqvae,
    mean_pairwise_ssim,
    parse_slice_index,
    position_channels,
    position_map,
    prior_network_settings,
    real_image_batch,
    sample_affine,
    sample_class_labels,
)
from monai_vqbrain.prior import codes as codes_module
from monai_vqbrain.prior.frechet import _frechet_distance_from_samples
from monai_vqbrain.utils import read_model, read_model_metadata, save_model
from monai_vqbrain.workflows import check_settings

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
    "classifier_notes",
)
# the entries with the prior's results alone (generation_metrics false)
SAMPLING_REPORT_KEYS = REPORT_KEYS[: REPORT_KEYS.index("prior_conditioning") + 1]


pytestmark = pytest.mark.usefixtures("one_thread")


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


# --------------------------------------------------------------------------------------------- labels and codes
def test_slice_index_is_parsed_from_oasis_and_nifti_names():
    assert parse_slice_index("case_001_slice_10.nii.png") == 10
    assert parse_slice_index("OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz#slice45") == 45
    assert parse_slice_index("brain.png") is None


def test_slice_position_labels_bin_the_training_range_and_spread_samples_like_the_data():
    train = {"slice_indices": torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 7, 7])}
    labels = SlicePositionLabels.fit("slice_position", 4, train)
    assert labels.index_range == (0, 7)
    assert labels(train["slice_indices"]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert labels.class_counts == [2, 2, 2, 4]
    assert labels([None, -1, 99]).tolist() == [2, 2, 3]  # unknown -> middle bin; beyond the range -> clipped
    samples = labels.sample_labels(10)
    assert samples.tolist() == sorted(samples.tolist()) and torch.bincount(samples).tolist() == [2, 2, 2, 4]
    rebuilt = SlicePositionLabels.from_metadata(labels.to_metadata())
    assert rebuilt(train["slice_indices"]).tolist() == labels(train["slice_indices"]).tolist()


def test_names_without_slice_index_still_train_with_one_class():
    labels = SlicePositionLabels.fit("slice_position", 4, {"slice_indices": torch.tensor([-1, -1, -1])})
    assert labels.index_range is None and labels([-1, -1, -1]).tolist() == [0, 0, 0]
    assert labels.sample_labels(3).tolist() == [0, 0, 0]
    unconditioned = SlicePositionLabels.fit("none", 4, {"slice_indices": torch.tensor([0, 1])})
    assert unconditioned.num_classes is None and unconditioned([0, 1]) is None
    with pytest.raises(ValueError, match="prior_conditioning"):
        SlicePositionLabels("slice_index", 4)


def test_code_dataset_and_prepare_batch_pass_labels_to_the_prior():
    cache = {"codes": torch.randint(0, 32, (3, 8, 8), dtype=torch.int16), "names": ["a", "b", "c"],
             "slice_indices": torch.tensor([0, 5, 9])}
    labels = SlicePositionLabels.fit("slice_position", 2, cache)
    item = CodeDataset(cache, labels)[1]
    assert item["codes"].dtype == torch.long and item["label"].item() == 1 and item["name"] == "b"
    batch = torch.utils.data.default_collate([CodeDataset(cache, labels)[i] for i in range(3)])
    codes, targets, args, kwargs = PriorPrepareBatch()(batch, torch.device("cpu"))
    assert codes is targets and args == () and kwargs["class_labels"].tolist() == [0, 1, 1]
    assert "label" not in CodeDataset(cache, None)[0]


def test_position_features_tell_the_prior_where_it_is():
    features = position_map((6, 8), 2)
    assert features.shape == (8, 6, 8) and position_channels(2) == 8 and position_channels(0) is None
    assert torch.equal(features[:4, :, 0], features[:4, :, 7])  # row features are constant along a row
    assert torch.equal(features[4:, 0, :], features[4:, 5, :])  # column features are constant along a column
    assert len({tuple(features[:, r, c].tolist()) for r in range(6) for c in range(8)}) == 48  # all distinct
    batch = {"codes": torch.zeros(3, 6, 8, dtype=torch.long)}
    _, _, _, kwargs = PriorPrepareBatch(position_frequencies=2)(batch, torch.device("cpu"))
    assert kwargs["cond_map"].shape == (3, 8, 6, 8) and torch.equal(kwargs["cond_map"][2], features)
    assert "cond_map" not in PriorPrepareBatch()(batch, torch.device("cpu"))[3]


def test_code_cache_is_reused_and_invalidated(trained_bundle, demo_root, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    vqvae = tiny_vqvae(trained_bundle / "models" / "model.pt")
    sha = file_sha256(trained_bundle / "models" / "model.pt")
    kwargs = {"dataset_dir": data, "dataset_format": "auto", "num_workers": 0}
    cache = tmp_path / "codes_validate.pt"

    first = load_or_encode_codes(cache, vqvae, sha, kwargs, "validate", 32)
    dataset = get_dataset(data, "validate", image_size=32)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        assert torch.equal(first["codes"].long(), vqvae.index_quantize(images))
    assert first["names"] == [dataset[i]["name"] for i in range(len(dataset))]
    assert first["slice_indices"].tolist() == [parse_slice_index(n) for n in first["names"]]

    encodings = []
    real_encode = codes_module.encode_dataset
    monkeypatch.setattr(codes_module, "encode_dataset", lambda *a, **k: encodings.append(1) or real_encode(*a, **k))
    assert torch.equal(load_or_encode_codes(cache, vqvae, sha, kwargs, "validate", 32)["codes"], first["codes"])
    assert encodings == [], "a matching cache must be read, not recomputed"

    load_or_encode_codes(cache, vqvae, "0" * 64, kwargs, "validate", 32)  # another VQ-VAE checkpoint
    assert len(encodings) == 1
    changed = sorted((data / "keras_png_slices_validate").glob("*.png"))[0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the data changed
    load_or_encode_codes(cache, vqvae, "0" * 64, kwargs, "validate", 32)
    assert len(encodings) == 2
    load_or_encode_codes(cache, vqvae, "0" * 64, kwargs, "validate", 32)
    assert len(encodings) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "atomic writes leave no temporary file"


# ----------------------------------------------------------------------------------------------------- metrics
def test_code_metrics_in_bits_per_code_and_accuracy():
    codes = torch.randint(0, 16, (2, 4, 4))
    uniform = torch.zeros(2, 16, 4, 4)
    nll = CodeNLLMetric()
    nll(uniform, codes)
    assert nll.aggregate().item() == pytest.approx(4.0)  # log2(16) bits for a uniform guess
    sure = torch.nn.functional.one_hot(codes, 16).permute(0, 3, 1, 2).float() * 50
    accuracy = CodeAccuracyMetric()
    accuracy(sure, codes)
    accuracy(sure.roll(1, dims=1), codes)
    assert accuracy.aggregate().item() == pytest.approx(0.5)


def test_frechet_distance_matches_monai_and_survives_few_samples():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, generator=generator), torch.randn(300, 4, generator=generator) + 0.5
    assert frechet_distance(a, b) == pytest.approx(float(FIDMetric()(a, b)), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    few = frechet_distance(a[:3], b[:5])  # fewer samples than features: singular covariances
    assert few is not None and math.isfinite(few) and few >= 0
    assert frechet_distance(a[:1], b) is None


def test_mean_pairwise_ssim_of_identical_images_is_one():
    images = torch.rand(1, 1, 16, 16).repeat(3, 1, 1, 1)
    assert mean_pairwise_ssim(images) == pytest.approx(1.0, abs=1e-5)
    assert mean_pairwise_ssim(images[:1]) is None
    assert mean_pairwise_ssim(torch.rand(6, 1, 16, 16), max_pairs=4) < 0.5


# ------------------------------------------------------------------------------------------------ prior training
def test_training_prior_writes_checkpoints_cache_and_history(prior_root):
    models = prior_root / "models"
    for name in ("prior.pt", "prior_last.pt", "codes_train.pt", "codes_validate.pt", "prior_training_history.json"):
        assert (models / name).is_file(), name
    history = json.loads((models / "prior_training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for key in ("train_bits_per_code", "train_accuracy", "val_bits_per_code", "val_accuracy"):
        assert key in history[-1], key
    best = torch.load(models / "prior.pt", weights_only=True)
    assert "metadata" not in best and "model" not in best, "prior.pt holds the state dict only"
    metadata = read_model_metadata(models / "prior.pt")
    assert metadata["key_metric"] == pytest.approx(min(r["val_bits_per_code"] for r in history))
    assert metadata["network"] == "GatedPixelCNN" and metadata["network_settings"]["channels"] == 8
    assert metadata["network_settings"]["num_embeddings"] == 32 and metadata["code_size"] == [8, 8]
    assert metadata["vqvae_sha256"] == file_sha256(models / "model.pt")
    assert metadata["conditioning"]["type"] == "slice_position" and metadata["conditioning"]["num_bins"] == 4
    assert metadata["position_frequencies"] == 4 and metadata["network_settings"]["cond_channels"] == 16
    assert torch.load(models / "prior_last.pt", weights_only=True)["metadata"]["epoch"] == 2
    assert (prior_root / "outputs" / "tensorboard_prior").is_dir()
    with Image.open(prior_root / "outputs" / "prior_learning_curves.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > 400


def test_training_prior_does_not_overwrite_unless_asked(prior_root, demo_root):
    before = (prior_root / "models" / "prior.pt").read_bytes()
    user_error(CheckpointError, "already exists", train_prior, prior_root, demo_root)
    # as the command line passes it: the string "false" must not resume
    user_error(CheckpointError, "already exists", train_prior, prior_root, demo_root, resume="false")
    assert (prior_root / "models" / "prior.pt").read_bytes() == before


def test_training_prior_resumes_and_reuses_the_code_cache(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    cache_bytes = (tmp_path / "models" / "codes_train.pt").read_bytes()
    train_prior(tmp_path, demo_root, prior_max_epochs=3, resume=True)
    history = json.loads((tmp_path / "models" / "prior_training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert torch.load(tmp_path / "models" / "prior_last.pt", weights_only=True)["metadata"]["epoch"] == 3
    best = read_model_metadata(tmp_path / "models" / "prior.pt")
    assert best["key_metric"] == pytest.approx(min(r["val_bits_per_code"] for r in history))
    assert (tmp_path / "models" / "codes_train.pt").read_bytes() == cache_bytes


def test_training_prior_saves_the_asked_epoch_snapshots(trained_bundle, demo_root, tmp_path):
    copy_models(trained_bundle, tmp_path, ("model.pt",))
    train_prior(tmp_path, demo_root, prior_max_epochs=3, prior_save_epochs=[1, 3])
    models = tmp_path / "models"
    assert sorted(p.name for p in models.glob("prior_epoch_*.pt")) == ["prior_epoch_1.pt", "prior_epoch_3.pt"]
    first, last = (torch.load(models / f"prior_epoch_{e}.pt", weights_only=True) for e in (1, 3))
    assert [read_model_metadata(models / f"prior_epoch_{e}.pt")["epoch"] for e in (1, 3)] == [1, 3]
    final = torch.load(models / "prior_last.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert not all(torch.equal(first[k], final[k]) for k in final)
    # a snapshot is a prior checkpoint the sampler loads like the best model
    prior, metadata = load_prior(models / "prior_epoch_1.pt", "cpu", vqvae=tiny_vqvae(models / "model.pt"))
    assert metadata["epoch"] == 1
    user_error(SettingError, "prior_save_epochs", train_prior, tmp_path / "other", demo_root, prior_save_epochs=[0])


def test_training_prior_without_vqvae_is_a_clear_error(tmp_path, demo_root):
    user_error(CheckpointError, "train it first", train_prior, tmp_path, demo_root)
    assert not (tmp_path / "models" / "prior.pt").exists()


def test_unconditioned_prior_trains_and_generates(trained_bundle, demo_root, tmp_path):
    copy_models(trained_bundle, tmp_path)
    train_prior(tmp_path, demo_root, prior_max_epochs=1, prior_conditioning="none")
    metadata = read_model_metadata(tmp_path / "models" / "prior.pt")
    assert metadata["network_settings"]["num_classes"] is None
    out = generate(tmp_path, demo_root, num_samples=2)
    metrics = json.loads((out / "generation_metrics.json").read_text())
    assert metrics["prior_conditioning"] == "none" and metrics["sample_class_labels"] is None


# ---------------------------------------------------------------------------------------------------- generation
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


def test_a_report_written_before_the_metrics_says_they_are_pending(tmp_path):
    # issue 25: a run killed while measuring left a file that read like a --generation_metrics false run
    samples = SimpleNamespace(names=["sample_000.png"], labels=None, seconds=1.0)
    run = {"seed": 0, "temperature": 1.0, "image_size": 32, "prior_checkpoint": "p.pt", "vqvae_checkpoint": "m.pt"}
    for metrics, status in ((True, "pending: the run stopped before the metrics were written; run it again"),
                            (False, "not measured (--generation_metrics false)")):
        engine = SimpleNamespace(state=SimpleNamespace(metrics={}, output=None))
        GenerationReport(samples, {}, tmp_path, run, [8, 8], metrics=metrics)(engine)
        report = json.loads((tmp_path / "generation_metrics.json").read_text())
        assert report["metrics_status"] == status
        assert [key for key in report if key not in GENERATION_METRICS_KEYS] == []


def test_the_generation_metrics_reference_is_generated_from_the_key_descriptions():
    from monai_vqbrain.prior import generation_metrics_markdown

    table = generation_metrics_markdown()
    for key in ("memorisation_ssim_test_mean", "fd_train_subset_vs_test", "code_size", "classifier_images_per_side_train_vs_test"):
        assert f"| `{key}` | {GENERATION_METRICS_KEYS[key]} |" in table
    assert all(text.strip() for text in GENERATION_METRICS_KEYS.values())


def slice_items(cases: range, slices: int) -> list[dict]:
    """In-memory dataset items of brain-like 32x32 slices named like OASIS PNGs."""
    return [
        {"image": torch.as_tensor(brain_like_slice(32, case * 100 + index), dtype=torch.float32)[None] / 255.0,
         "name": f"case_{case:03d}_slice_{index}.nii.png"}
        for case in cases
        for index in range(slices)
    ]


def evaluate_generation(samples, vqvae, train, test, **settings) -> dict:
    """The quality metric of ``samples`` as an evaluator over ``test`` computes it (generate.json's ``evaluator``)."""
    from ignite.engine import Engine

    quality = GenerationQuality(SimpleNamespace(images=samples, names=[f"s{i}" for i in range(len(samples))]), vqvae,
                                train, batch_size=8, **settings)
    engine = Engine(real_image_batch)
    quality.attach(engine)
    engine.run(DataLoader(test, batch_size=8), max_epochs=1)
    return engine.state.metrics["generation"]


def test_generation_quality_measures_realism_beside_its_references(trained_bundle):
    vqvae = tiny_vqvae(trained_bundle / "models" / "model.pt")
    train, test = slice_items(range(1, 9), 3), slice_items(range(20, 32), 3)  # 8 and 12 subjects
    # noise as "generated" images: a realism measure must fail them
    samples = torch.rand(24, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = {"classifier_folds": 3, "classifier_epochs": 4, "bootstrap": 200, "fd_bootstrap": 10}
    metrics = evaluate_generation(samples, vqvae, train, test, **settings)
    assert metrics["classifier_auc_generated_vs_test"] > 0.9
    # two real sets of disjoint subjects from one distribution: far from a clean separation
    assert metrics["classifier_auc_train_vs_test"] < 0.8
    assert 0.0 <= metrics["classifier_auc_reconstructed_vs_test"] <= 1.0
    # at most as many images per side as samples; the reconstruction reference has half of the test subjects a side
    assert metrics["classifier_images_per_side_generated_vs_test"] == 24
    assert metrics["classifier_images_per_side_train_vs_test"] == 24
    assert metrics["classifier_images_per_side_reconstructed_vs_test"] == 18
    for comparison in ("generated_vs_test", "train_vs_test", "reconstructed_vs_test"):
        low, high = metrics[f"classifier_auc_{comparison}_ci95"]
        assert low <= metrics[f"classifier_auc_{comparison}"] <= high
        assert len(metrics[f"classifier_auc_{comparison}_folds"]) == 3
    assert metrics["classifier_notes"] == [] and "Student t" in metrics["classifier"]["ci95_method"]
    json.dumps(metrics)  # JSON-serialisable
    # a smaller real pool is recorded, and the classifier can be turned off
    off = evaluate_generation(samples, vqvae, train, test, classifier=False, real_images=10, **settings)
    assert off["classifier_auc_generated_vs_test"] is None and off["classifier"]["enabled"] is False
    assert off["fd_generated_vs_test"] == pytest.approx(metrics["fd_generated_vs_test"])
    small = evaluate_generation(samples, vqvae, train, test, real_images=12, **settings)
    assert small["classifier"]["num_test_pool_images"] == 12
    assert small["classifier_images_per_side_generated_vs_test"] == 12


def test_blank_samples_are_counted_and_not_taken_for_copies(trained_bundle):
    vqvae = tiny_vqvae(trained_bundle / "models" / "model.pt")
    train, test = slice_items(range(1, 5), 3), slice_items(range(20, 24), 3)
    # an empty training slice, as the demo data held before version 3: an empty sample matches it at SSIM 1
    train.append({"image": torch.zeros(1, 32, 32), "name": "case_009_slice_0.nii.png"})
    generator = torch.Generator().manual_seed(0)
    brains = torch.stack([item["image"] for item in slice_items(range(40, 46), 1)])
    noisy = (brains + 0.05 * torch.randn(brains.shape, generator=generator)).clamp(0, 1)
    samples = torch.cat([noisy, torch.zeros(2, 1, 32, 32)])
    metrics = evaluate_generation(samples, vqvae, train, test, classifier=False, bootstrap=50, fd_bootstrap=0)
    assert metrics["blank_samples"] == 2
    entries = metrics["memorisation_per_sample"]
    assert [entry["blank"] for entry in entries] == [False] * 6 + [True] * 2
    assert all(entry["ssim"] > 0.99 for entry in entries[6:])  # the blank samples "match" the empty slice
    kept = [entry["ssim"] for entry in entries[:6]]
    assert metrics["memorisation_ssim_max"] == pytest.approx(max(kept)) and max(kept) < 0.99
    assert metrics["memorisation_ssim_mean"] == pytest.approx(np.mean(kept))


def test_knn_precision_recall_tell_fidelity_from_coverage():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=generator)
    same = knn_precision_recall(real, torch.randn(300, 8, generator=generator))
    # samples piled on a few real images: all look real (precision), little of the variety is covered (recall)
    collapsed = knn_precision_recall(real, real[:10].repeat(30, 1) + 0.01 * torch.randn(300, 8, generator=generator))
    shifted = knn_precision_recall(real, torch.randn(300, 8, generator=generator) + 4.0)
    assert same["precision"] > 0.6 and same["recall"] > 0.6 and same["k"] == 3
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2
    assert shifted["precision"] < 0.1 and shifted["recall"] < 0.1
    low, high = same["precision_ci95"]
    assert low <= same["precision"] <= high
    with pytest.raises(ValueError, match="at least 2"):
        knn_precision_recall(real, real[:1])


def test_bootstrap_intervals_bracket_their_estimates():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 64, generator=generator), torch.randn(50, 64, generator=generator) + 0.5
    # the Gram-matrix form used by the bootstrap is the same distance
    assert _frechet_distance_from_samples(a.double(), b.double()) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    low, high = bootstrap_frechet_interval(a, b, resamples=40)
    # bias-corrected: the interval holds the point estimate (raw bootstrap distances all lie above it)
    assert 0 < low < frechet_distance(a, b) < high and bootstrap_frechet_interval(a[:1], b) is None
    values = torch.rand(40, generator=generator)
    low, high = bootstrap_mean_interval(values, resamples=500)
    assert low < float(values.mean()) < high and high - low < 0.3
    images = torch.rand(10, 1, 16, 16, generator=generator)
    mean, (low, high) = mean_pairwise_ssim(images, bootstrap=200)
    assert mean == pytest.approx(mean_pairwise_ssim(images)) and low <= mean <= high


def test_generation_is_measured_on_the_configured_test_dataset(prior_root, demo_root, tmp_path):
    # generate.json declares the real slices it measures against (test#dataset, as evaluate.json does): a config
    # override of that dataset is what the metrics see
    copy_models(prior_root, tmp_path)
    out = generate(tmp_path, demo_root, generation_metrics=True, generation_classifier=False,
                   **{"test#dataset#data": "$@test#datalist[:3]", "generation_train#dataset#data": "$@generation_train#datalist[:5]"})
    metrics = json.loads((out / "generation_metrics.json").read_text())
    assert metrics["num_test_images"] == 3 and metrics["num_train_images"] == 5
    assert math.isfinite(metrics["fd_generated_vs_test"])


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
    user_error(SettingError, "sample_pixel_spacing", check_settings, {"sample_pixel_spacing": -1.0}, [])


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


def test_generation_summary_is_one_line_of_headline_metrics():
    report = {
        "classifier_auc_generated_vs_test": 0.971, "classifier_auc_generated_vs_test_ci95": [0.88, 1.0],
        "classifier_auc_train_vs_test": 0.46, "classifier_auc_reconstructed_vs_test": float("nan"),
        "fd_generated_vs_test": 1.02, "diversity_ssim_generated": 0.534, "memorisation_ssim_mean": 0.66,
        "classifier_dprime_generated_vs_test": 3.21, "classifier_dprime_generated_vs_test_ci95": [2.5, 3.9],
    }
    line = generation_summary(report)
    assert "\n" not in line
    assert "generated vs test 0.97 [0.88, 1.00]" in line and "real train vs test 0.46" in line
    assert "reconstructed vs test n/a" in line and "diversity 0.534" in line and "(real test n/a)" in line
    assert "d' generated vs test 3.21 [2.50, 3.90]" in line


def test_generating_without_prior_is_a_clear_error(trained_bundle, demo_root, tmp_path):
    copy_models(trained_bundle, tmp_path)
    user_error(CheckpointError, "train the prior first", generate, tmp_path, demo_root)


@pytest.mark.parametrize("kind", ["folder", "device", "dangling link"])
def test_a_checkpoint_path_that_is_no_regular_file_is_named_as_such_not_as_missing(tmp_path, kind):
    # issue 25: --prior_checkpoint <a folder> or /dev/zero said "does not exist; train the prior first"
    from monai_vqbrain.prior import load_vqvae, read_prior_settings, vqvae_fingerprint
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


def test_slice_position_bins_are_described_by_their_slices():
    labels = SlicePositionLabels("slice_position", 4, index_range=(0, 15), class_counts=[4, 4, 4, 4])
    assert [labels.bin_description(b) for b in range(4)] == [
        "slices 0-3 of 0-15", "slices 4-7 of 0-15", "slices 8-11 of 0-15", "slices 12-15 of 0-15"
    ]
    assert SlicePositionLabels("none", 4).bin_description(0) == ""


def test_prior_large_preset_is_a_larger_prior_of_the_same_recipe():
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train.json", "train_prior.json", "prior_large.json")])
    prior = parser.get_parsed_content("prior_def")
    default = ConfigParser()
    default.read_config([str(configs / name) for name in ("train.json", "train_prior.json")])
    small = default.get_parsed_content("prior_def")
    assert (prior.channels, prior.num_layers) == (128, 20) and (small.channels, small.num_layers) == (48, 12)
    assert prior.layers[1].dropout.p == 0.1 and small.layers[1].dropout.p == 0.0
    assert prior.num_embeddings == small.num_embeddings and prior.num_classes == small.num_classes
    assert parser.get_parsed_content("prior_max_epochs") == 40


def test_prior_quality_preset_is_the_default_prior_on_a_longer_schedule():
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    quality, default = ConfigParser(), ConfigParser()
    quality.read_config([str(configs / name) for name in ("train.json", "train_prior.json", "prior_quality.json")])
    default.read_config([str(configs / name) for name in ("train.json", "train_prior.json")])
    assert quality.get_parsed_content("prior_max_epochs") == 30 > default.get_parsed_content("prior_max_epochs") == 12
    # the same network and optimiser: only the schedule is longer (the cosine follows prior_max_epochs)
    assert quality["prior_def"] == default["prior_def"]
    for key in ("prior_batch_size", "prior_learning_rate", "prior_conditioning", "prior_slice_bins"):
        assert quality[key] == default[key], key
    assert quality["prior_lr_scheduler"]["T_max"] == "@prior_max_epochs"


def test_grid_says_which_end_is_the_base_of_the_brain(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from monai_vqbrain.prior import generation_handlers as handlers_module

    drawn = {}
    monkeypatch.setattr(handlers_module, "plot_sample_grid",
                        lambda images, path, titles, heading=None: drawn.update(titles=titles, heading=heading))
    conditioning = {"type": "slice_position", "num_bins": 4, "slice_index_range": [0, 15], "class_counts": [1, 1, 1, 1]}
    samples = SimpleNamespace(images=torch.rand(4, 1, 8, 8), names=[f"sample_{i:03d}.png" for i in range(4)],
                              labels=torch.arange(4))
    handlers_module.SampleGrid(samples, {"conditioning": conditioning}, tmp_path)(None)
    assert drawn["heading"] == ("samples by slice position, from the base of the brain (slice 0, top left) to the "
                                "vertex (slice 15, bottom right)")
    assert drawn["titles"][0] == "sample_000\nslices 0-3 of 0-15"
