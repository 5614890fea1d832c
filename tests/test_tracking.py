"""Experiment tracking: ``--tracking mlflow`` and the bundle's ``mlflow_tracking.json`` log to a local store."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import CONFIGS, GENERATE, NUM_SAMPLES, TRAIN, copy_models, run_bundle, train_prior, user_error

from monai_vqbrain.errors import SettingError
from monai_vqbrain.workflows import check_settings

mlflow = pytest.importorskip("mlflow")

EVALUATE = str(CONFIGS / "evaluate.json")
TRACKING = str(CONFIGS / "mlflow_tracking.json")


def _runs(output_dir, experiment="monai_vqbrain"):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(output_dir / 'mlruns.db').as_posix()}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def test_training_and_evaluating_are_tracked_in_a_local_store(demo_root, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    bundle_root, outputs = tmp_path / "bundle", tmp_path / "outputs"
    common = {"bundle_root": str(bundle_root), "dataset_dir": str(demo_root), "output_dir": str(outputs)}
    run_bundle("training", TRAIN, max_epochs=2, log_interval=1, tracking=TRACKING, **common)
    run_bundle("evaluating", [TRAIN, EVALUATE], tracking=TRACKING, **common)
    assert (outputs / "mlruns.db").is_file() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "mlruns.db").exists()

    client, (training, evaluation) = _runs(outputs)
    metrics = training.data.metrics
    for key in ("loss", "loss_reconstruction", "batch_perplexity", "train_perplexity", "val_ssim", "val_psnr"):
        assert isinstance(metrics[key], float), key
    # one batch's codebook statistics are labelled as such, never as the epoch's
    assert "perplexity" not in metrics and "codebook_usage" not in metrics
    history = client.get_metric_history(training.info.run_id, "val_ssim")
    assert [m.step for m in history] == [1, 2]
    recorded = json.loads((bundle_root / "models" / "training_history.json").read_text())
    assert history[-1].value == pytest.approx(recorded[-1]["val_ssim"])
    assert training.data.params["batch_size"] == "4" and training.data.params["image_size"] == "32"
    artifacts = {a.path for a in client.list_artifacts(training.info.run_id)}
    assert "training_history.json" in artifacts
    # the executed config too, although --output_dir made MONAI's save_execute_config the text "<dir> + '/...'"
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts

    report = json.loads((outputs / "metrics.json").read_text())
    assert evaluation.data.metrics["ssim_mean"] == pytest.approx(report["ssim_mean"])
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"metrics.json", "per_image_metrics.csv", "reconstructions.png", "loss_curves.png"} <= artifacts
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts


def test_executed_config_file_undoes_monais_concatenation():
    from monai_vqbrain.workflows import executed_config_file

    assert executed_config_file("/x/out + '/config_20261202_172900.json'") == "/x/out/config_20261202_172900.json"
    assert executed_config_file("/b/outputs/config_20261202_172900.json") == "/b/outputs/config_20261202_172900.json"
    assert executed_config_file(None) is None and executed_config_file(False) is None


def test_monai_default_tracking_logs_the_loss_as_a_number(demo_root, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    run_bundle("training", TRAIN, bundle_root=str(tmp_path / "bundle"), dataset_dir=str(demo_root),
               output_dir=str(outputs), max_epochs=1, tracking="mlflow")
    run_bundle("evaluating", [TRAIN, EVALUATE], bundle_root=str(tmp_path / "bundle"), dataset_dir=str(demo_root),
               output_dir=str(outputs), tracking="mlflow")
    client, (training, evaluation) = _runs(outputs)
    losses = client.get_metric_history(training.info.run_id, "train_loss")
    assert losses and all(isinstance(m.value, float) for m in losses)
    assert "val_ssim" in training.data.metrics
    assert evaluation.data.metrics["ssim_mean"] == pytest.approx(
        json.loads((outputs / "metrics.json").read_text())["ssim_mean"])


def test_training_prior_is_tracked(trained_bundle, demo_root, tmp_path, monkeypatch):
    from conftest import TINY_PRIOR, TRAIN_PRIOR

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    bundle_root, outputs = tmp_path / "bundle", tmp_path / "outputs"
    (bundle_root / "models").mkdir(parents=True)
    for name in ("model.pt", "model.json"):
        shutil.copy2(trained_bundle / "models" / name, bundle_root / "models" / name)
    run_bundle("training_prior", TRAIN_PRIOR, bundle_root=str(bundle_root), dataset_dir=str(demo_root),
               output_dir=str(outputs), prior_max_epochs=2, log_interval=1, tracking=TRACKING, **TINY_PRIOR)
    client, (prior,) = _runs(outputs)
    for key in ("prior_train_loss", "train_bits_per_code", "val_bits_per_code", "val_accuracy"):
        assert isinstance(prior.data.metrics[key], float), key
    assert [m.step for m in client.get_metric_history(prior.info.run_id, "val_bits_per_code")] == [1, 2]
    assert prior.data.params["prior_max_epochs"] == "2"
    assert "prior_training_history.json" in {a.path for a in client.list_artifacts(prior.info.run_id)}


@pytest.fixture(scope="module")
def prior_root(tmp_path_factory, trained_bundle, demo_root):
    """The tiny VQ-VAE plus a prior trained for two epochs, as in test_prior_training (read-only: copy it)."""
    root = tmp_path_factory.mktemp("prior_bundle")
    copy_models(trained_bundle, root, ("model.pt", "model.json"))
    train_prior(root, demo_root)
    return root


def test_generating_is_tracked(prior_root, demo_root, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    bundle_root = tmp_path / "bundle"
    copy_models(prior_root, bundle_root)
    common = {"bundle_root": str(bundle_root), "dataset_dir": str(demo_root), "num_samples": NUM_SAMPLES}
    for tracking, outputs in ((TRACKING, tmp_path / "outputs"), ("mlflow", tmp_path / "default")):
        run_bundle("generating", GENERATE, output_dir=str(outputs), tracking=tracking, **common)
    assert not (tmp_path / "mlruns.db").exists()

    outputs = tmp_path / "outputs"
    report = json.loads((outputs / "generated" / "generation_metrics.json").read_text())
    client, (generation,) = _runs(outputs)
    metrics = generation.data.metrics
    for key in ("fd_generated_vs_test", "fd_train_vs_test", "diversity_ssim_generated", "memorisation_ssim_mean",
                "memorisation_ssim_max", "sampling_seconds", "prior_val_bits_per_code", "prior_val_accuracy"):
        assert metrics[key] == pytest.approx(report[key]), key
    low, high = report["fd_generated_vs_test_ci95"]
    assert (metrics["fd_generated_vs_test_ci95_low"], metrics["fd_generated_vs_test_ci95_high"]) == pytest.approx(
        (low, high))
    # the demo's 2 test subjects are too few for the classifier's folds: its AUCs are null, so not logged
    assert report["classifier_auc_generated_vs_test"] is None and "classifier_auc_generated_vs_test" not in metrics
    params = generation.data.params
    assert params["num_samples"] == str(NUM_SAMPLES) and params["sample_seed"] == "0"
    assert params["sample_pixel_spacing"] == "1.0"
    artifacts = {a.path for a in client.list_artifacts(generation.info.run_id)}
    assert {"generation_metrics.json", "grid.png", "nearest_training_slices.png"} <= artifacts
    # nothing of evaluating's report is logged as generating's
    assert not artifacts & {"metrics.json", "reconstructions.png"}

    # MONAI's default tracking settings track generating too (its numbers, without our artifacts)
    _, (default,) = _runs(tmp_path / "default", experiment="monai_vqbrain")
    assert default.data.metrics["fd_generated_vs_test"] == pytest.approx(report["fd_generated_vs_test"])

    # without the metrics evaluator the sampler carries the tracking: the prior's results and the sampling time
    off = tmp_path / "off"
    run_bundle("generating", GENERATE, output_dir=str(off), tracking=TRACKING, generation_metrics=False, **common)
    client, (sampling,) = _runs(off)
    assert sampling.data.metrics["sampling_seconds"] == pytest.approx(
        json.loads((off / "generated" / "generation_metrics.json").read_text())["sampling_seconds"])
    assert "fd_generated_vs_test" not in sampling.data.metrics
    assert {"generation_metrics.json", "grid.png"} <= {a.path for a in client.list_artifacts(sampling.info.run_id)}


def test_generation_numbers_for_tracking():
    from monai_vqbrain.prior import generation_log_values

    report = {"classifier_auc_generated_vs_test": 0.75, "classifier_auc_train_vs_test": None, "seed": 3,
              "diversity_ssim_generated_ci95": [0.2, 0.4], "classifier": {"enabled": True}, "fd_train_vs_test": 1.5,
              "sample_files": ["sample_000.png"], "prior_conditioning": "none", "flag": True, "nan": float("nan")}
    assert generation_log_values(report) == {
        "classifier_auc_generated_vs_test": 0.75, "seed": 3.0, "diversity_ssim_generated_ci95_low": 0.2,
        "diversity_ssim_generated_ci95_high": 0.4, "fd_train_vs_test": 1.5}


def test_tracking_never_uses_a_server():
    for uri in ("http://tracking.example.com", "databricks", "file:///tmp/mlruns", ""):
        user_error(SettingError, "tracking_uri must be a local sqlite", check_settings, {"tracking_uri": uri})
    check_settings({"tracking_uri": "sqlite:////tmp/x/mlruns.db", "experiment_name": "x", "run_name": None})


def test_tracking_settings_are_override_keys(tmp_path):
    from monai_vqbrain.workflows import check_override_keys

    argv = ["/x/monai/bundle/__main__.py", "run", "training", "--config_file", TRAIN, "--tracking", TRACKING,
            "--experiment_name", "mine", "--run_name", "first"]
    check_override_keys(argv)
    with pytest.raises(SettingError, match="experiment_name"):
        check_override_keys(argv[:-4] + ["--experiment", "mine"])


@pytest.fixture(autouse=True)
def _no_stray_files(tmp_path):
    yield
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
