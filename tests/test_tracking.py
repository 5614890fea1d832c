"""Experiment tracking: ``--tracking mlflow`` and the bundle's ``mlflow_tracking.json`` log to a local store."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import CONFIGS, TRAIN, run_bundle, user_error

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

    report = json.loads((outputs / "metrics.json").read_text())
    assert evaluation.data.metrics["ssim_mean"] == pytest.approx(report["ssim_mean"])
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"metrics.json", "per_image_metrics.csv", "reconstructions.png", "loss_curves.png"} <= artifacts


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
    from test_prior import TINY_PRIOR, TRAIN_PRIOR

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    bundle_root, outputs = tmp_path / "bundle", tmp_path / "outputs"
    (bundle_root / "models").mkdir(parents=True)
    shutil.copy2(trained_bundle / "models" / "model.pt", bundle_root / "models" / "model.pt")
    run_bundle("training_prior", TRAIN_PRIOR, bundle_root=str(bundle_root), dataset_dir=str(demo_root),
               output_dir=str(outputs), prior_max_epochs=2, log_interval=1, tracking=TRACKING, **TINY_PRIOR)
    client, (prior,) = _runs(outputs)
    for key in ("prior_train_loss", "train_bits_per_code", "val_bits_per_code", "val_accuracy"):
        assert isinstance(prior.data.metrics[key], float), key
    assert [m.step for m in client.get_metric_history(prior.info.run_id, "val_bits_per_code")] == [1, 2]
    assert prior.data.params["prior_max_epochs"] == "2"
    assert "prior_training_history.json" in {a.path for a in client.list_artifacts(prior.info.run_id)}


def test_tracking_never_uses_a_server():
    for uri in ("http://tracking.example.com", "databricks", "file:///tmp/mlruns", ""):
        user_error(SettingError, "tracking_uri must be a local sqlite", check_settings, {"tracking_uri": uri}, [])
    check_settings({"tracking_uri": "sqlite:////tmp/x/mlruns.db", "experiment_name": "x", "run_name": None}, [])


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
