"""The generation metrics: Fréchet distance, SSIM diversity and memorisation, precision and recall, bootstrap
intervals, GenerationQuality as an evaluator's metric, and the report of generation_metrics.json."""

from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, brain_like_slice, copy_models, generate, tiny_vqvae
from monai.metrics import FIDMetric
from torch.utils.data import DataLoader

from monai_vqbrain.prior import (
    GENERATION_METRICS_KEYS,
    GenerationQuality,
    GenerationReport,
    bootstrap_frechet_interval,
    bootstrap_mean_interval,
    frechet_distance,
    generation_summary,
    knn_precision_recall,
    mean_pairwise_ssim,
    real_image_batch,
)
from monai_vqbrain.prior.frechet import _frechet_distance_from_samples

pytestmark = pytest.mark.usefixtures("one_thread")


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
    # the documentation's hook puts the table where the page's marker is
    spec = importlib.util.spec_from_file_location("generated_tables", REPO_ROOT / "docs" / "hooks" / "generated_tables.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (REPO_ROOT / "docs" / "generating.md").read_text()
    assert "<!-- generation-metrics-keys -->" in page
    assert table in hook.on_page_markdown(page, page=None, config=None, files=None)


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



def test_a_classifier_test_limited_by_a_small_test_split_says_it_means_little(prior_root, demo_root, tmp_path, caplog):
    # issue 25: d' 10.40 [1.36, 19.44] on tiny data, with enough samples but few real test slices, and no word
    import logging

    copy_models(prior_root, tmp_path)
    package_logger = logging.getLogger("monai_vqbrain")  # the bundle's logging.conf replaced caplog's root handler
    package_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="monai_vqbrain"):
            out = generate(tmp_path, demo_root, num_samples=12, generation_metrics=True)
    finally:
        package_logger.removeHandler(caplog.handler)
    metrics = json.loads((out / "generation_metrics.json").read_text())
    real = metrics["num_test_images"]
    assert real < 12 and f"only {real} real test slices: a classifier AUC or d' from fewer than 256 a side" in caplog.text
    assert "measure on a test split of more slices" in caplog.text
