"""What every run guarantees against hostile runs and damaged files: two runs into one folder, a diverging run,
contradictory settings, a resume on other data, outputs where the next run would read them, half-finished, oversized
or tampered checkpoint sets, damaged histories and code caches, and MONAI's config warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    REPO_ROOT,
    TINY_NETWORK,
    TINY_OVERRIDES,
    TRAIN,
    run_bundle,
    user_error,
)
from PIL import Image

from monai_vqbrain.errors import CheckpointError, DatasetError, ImageFileError, OutputPathError, SettingError
from monai_vqbrain.handlers import HistoryFileError, TrainingCheckpointLoader, TrainingDivergedError, read_history
from monai_vqbrain.inference import check_outputs, find_input_files, read_input
from monai_vqbrain.networks import VQVAE, GatedPixelCNN
from monai_vqbrain.prior import load_or_encode_codes, load_prior
from monai_vqbrain.utils import load_checkpoint, load_network_weights, network_state_dict, save_checkpoint
from monai_vqbrain.utils.checkpoint import check_finite_weights
from monai_vqbrain.workflows import (
    LOCK_FILE,
    OutputFolderLockedError,
    check_checkpoint_dir,
    check_output_dirs,
    check_resumed_dataset,
    check_setting_combinations,
    check_settings,
    lock_output_dirs,
    release_output_locks,
)

EVALUATE = [TRAIN, str(CONFIGS / "evaluate.json")]


EVALUATE = [TRAIN, str(CONFIGS / "evaluate.json")]
INFERENCE = [TRAIN, str(CONFIGS / "inference.json")]
TRAIN_PRIOR = [TRAIN, str(CONFIGS / "train_prior.json")]
GENERATE = [*TRAIN_PRIOR, str(CONFIGS / "generate.json")]
ENV = {**os.environ, "MONAI_VQBRAIN_TRACEBACK": "", "PYTHONPATH": str(REPO_ROOT)}

# another process: for each line of JSON on its stdin, locks the folders it names, and answers "locked"; it holds
# them until its stdin closes
_HOLDER = textwrap.dedent(
    """
    import json, sys
    from monai_vqbrain.workflows import lock_output_dirs
    for line in sys.stdin:
        lock_output_dirs(json.loads(line), "training")
        print("locked", flush=True)
    """
)


def _cli(run_id: str, config_file, bundle_root: Path, dataset_dir: Path, *args: str) -> subprocess.CompletedProcess:
    tiny = [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in TINY_OVERRIDES.items()]
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(config_file),
               "--logging_file", str(CONFIGS / "logging.conf"), "--meta_file", str(CONFIGS / "metadata.json"),
               "--bundle_root", str(bundle_root), "--dataset_dir", str(dataset_dir), "--amp", "false", *tiny, *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=ENV)


def _our_lines(stderr: str) -> list[str]:
    """stderr without MONAI's warning about parsing config files (part of issue 19's other half)."""
    return [line for line in stderr.strip().splitlines()
            if "UserWarning" not in line and "create_workflow(" not in line and line.strip()]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file and folder below ``root`` with its content; lock files aside (a run from Python that raised holds
    its locks until the process ends, see :func:`release_output_locks`)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if p.name != LOCK_FILE}


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    release_output_locks()


@pytest.fixture(scope="module")
def holder():
    """Another process that locks the folders it is given (``holder(ckpt_dir=path)``) and returns its pid."""
    process = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=ENV)

    def hold(**folders: Path) -> int:
        process.stdin.write(json.dumps({key: str(value) for key, value in folders.items()}) + "\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "locked"
        return process.pid

    yield hold
    process.stdin.close()
    process.wait(timeout=60)


# ------------------------------------------------------------------------------------------------- output locks
def test_a_second_training_run_into_a_held_folder_is_one_line_exit_1_and_changes_nothing(holder, demo_root, tmp_path):
    models = tmp_path / "models"
    pid = holder(ckpt_dir=models)
    before = _tree(tmp_path)
    result = _cli("training", TRAIN, tmp_path, demo_root, "--max_epochs", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = _our_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: ckpt_dir '{models}' is in use by the 'training' run of pid "
                                                  f"{pid} on host "), lines
    assert "since 20" in lines[0]
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("run_id", "config_file", "key", "folder"),
    [
        ("evaluating", EVALUATE, "output_dir", "outputs"),
        ("training_prior", TRAIN_PRIOR, "ckpt_dir", "models"),
        ("generating", GENERATE, "generation_dir", "outputs/generated"),
    ],
)
def test_every_workflow_refuses_a_held_output_folder(run_id, config_file, key, folder, holder, trained_bundle,
                                                     demo_root, tmp_path):
    shutil.copytree(trained_bundle / "models", tmp_path / "models")
    holder(**{key: tmp_path / folder})
    before = _tree(tmp_path)
    user_error(OutputFolderLockedError, f"{key} '{tmp_path / folder}' is in use by the 'training' run of pid",
               run_bundle, run_id, config_file, bundle_root=str(tmp_path), dataset_dir=str(demo_root))
    assert _tree(tmp_path) == before


def test_inferring_refuses_a_held_output_folder(holder, trained_bundle, oasis_png_root, tmp_path):
    holder(output_dir=tmp_path / "recon")
    user_error(OutputFolderLockedError, f"output_dir '{tmp_path / 'recon'}' is in use", run_bundle, "inferring",
               INFERENCE, bundle_root=str(trained_bundle), output_dir=str(tmp_path / "recon"),
               input=str(oasis_png_root / "keras_png_slices_test"))
    assert os.listdir(tmp_path / "recon") == [LOCK_FILE]  # the holder's


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning_and_released(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "models"
    folder.mkdir()
    import socket

    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "yesterday", "workflow": "training"}
    (folder / LOCK_FILE).write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        lock_output_dirs({"ckpt_dir": folder}, "evaluating")
    try:
        assert f"taking over the stale lock of ckpt_dir '{folder}'" in caplog.text
        assert f"pid {record['pid']}" in caplog.text and "no longer runs" in caplog.text
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        release_output_locks()
    assert not (folder / LOCK_FILE).exists() and folder.is_dir()


def test_a_lock_file_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "workflow": "training"}))
    user_error(OutputFolderLockedError, "another host", lock_output_dirs, {"output_dir": tmp_path}, "inferring")
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "elsewhere.invalid"


def test_locks_are_released_on_ctrl_c_and_errors_and_new_folders_are_not_left_behind(tmp_path):
    runs = {}
    for ending in ("KeyboardInterrupt", "RuntimeError('bug')"):
        folder = tmp_path / ending.split("(")[0] / "models"
        script = (f"import os\nfrom monai_vqbrain.workflows import lock_output_dirs\n"
                  f"lock_output_dirs({{'ckpt_dir': {str(folder)!r}}}, 'training')\n"
                  f"assert os.path.exists({str(folder / LOCK_FILE)!r})\n"
                  f"raise {ending}\n")
        runs[folder] = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=ENV)
    for folder, run in runs.items():
        stderr = run.communicate(timeout=120)[1]
        assert run.returncode != 0 and "AssertionError" not in stderr, stderr
        assert not folder.exists(), f"{folder}: {list(folder.iterdir())}"
        assert not folder.parent.exists()  # created for the lock, removed with it


# --------------------------------------------------------------------------------------------------- divergence
def test_cli_a_diverging_training_run_is_one_line_exit_1_and_saves_nothing(demo_root, tmp_path):
    result = _cli("training", TRAIN, tmp_path, demo_root, "--max_epochs", "2", "--learning_rate", "1e30")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = _our_lines(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: training diverged at epoch 1, iteration ")
    assert "last finite loss" in lines[0] and "lower --learning_rate (now 1e+30)" in lines[0]
    assert not (tmp_path / "models").exists()


def test_a_run_diverging_after_good_epochs_keeps_their_checkpoints(trained_bundle, demo_root, tmp_path):
    models = shutil.copytree(trained_bundle / "models", tmp_path / "models")
    # a resumed run continues the saved optimizer and schedule (--learning_rate does not apply; resuming with more
    # epochs sets the rate from the schedule's base rate): the state's own rate makes the third epoch diverge
    state = torch.load(models / "last.pt", weights_only=True)
    state["optimizer"]["param_groups"][0]["lr"] = 1e30
    schedules = [entry for entry in state.values() if isinstance(entry, dict) and "base_lrs" in entry]
    assert schedules, "last.pt holds the learning-rate schedule"
    for schedule in schedules:
        schedule["base_lrs"] = [1e30]
    torch.save(state, models / "last.pt")
    before = _tree(models)
    error = user_error(TrainingDivergedError, "training diverged at epoch 3", run_bundle, "training", TRAIN,
                       bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=4, resume=True)
    assert error.exit_code == 1
    assert _tree(models) == before


def test_a_diverging_prior_is_stopped_before_its_checkpoints(trained_bundle, demo_root, tmp_path):
    shutil.copytree(trained_bundle / "models", tmp_path / "models", ignore=shutil.ignore_patterns("last.pt"))
    prior = {"prior_max_epochs": 2, "prior_learning_rate": 1e30, "prior_def#channels": 8, "prior_def#num_layers": 2}
    user_error(TrainingDivergedError, "lower --prior_learning_rate (now ", run_bundle, "training_prior",
               TRAIN_PRIOR, bundle_root=str(tmp_path), dataset_dir=str(demo_root), **prior)
    for name in ("prior.pt", "prior_last.pt"):  # an epoch that ended with finite weights may have been saved
        if (tmp_path / "models" / name).exists():
            check_finite_weights(network_state_dict(load_checkpoint(tmp_path / "models" / name)), name)


def test_the_savers_never_write_non_finite_weights(tmp_path):
    from ignite.engine import Engine

    from monai_vqbrain.handlers import TrainingCheckpointSaver

    network = torch.nn.Linear(2, 2)
    with torch.no_grad():
        network.weight[0, 0] = float("nan")
    engine = Engine(lambda engine, batch: None)
    TrainingCheckpointSaver(tmp_path / "last.pt", {"model": network}).attach(engine)
    user_error(TrainingDivergedError, "'" + str(tmp_path / "last.pt") + "' was not written", engine.run, [0],
               max_epochs=1)
    assert not (tmp_path / "last.pt").exists()


# ----------------------------------------------------------------------------------------- setting combinations
@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"val_interval": 5, "max_epochs": 2}, "max_epochs", "val_interval (5) is larger than max_epochs (2)"),
        ({"val_interval": 3, "prior_max_epochs": 2, "max_epochs": 9}, "prior_max_epochs",
         "val_interval (3) is larger than prior_max_epochs (2)"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, None, "val_fraction + test_fraction must be below 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, None, "val_fraction + test_fraction must be below 1"),
        ({"image_size": 32, "train_crop_size": 48}, None, "train_crop_size must be at most image_size (32)"),
    ],
)
def test_contradictory_settings_are_setting_errors(settings, key, message):
    user_error(SettingError, message, check_setting_combinations, settings, key)


def test_settings_that_fit_together_pass():
    check_setting_combinations({"val_interval": 2, "max_epochs": 2, "val_fraction": 0.2, "test_fraction": 0.7,
                                "image_size": 32, "train_crop_size": 0}, "max_epochs")
    # a workflow that does not train is not asked about validation
    check_setting_combinations({"val_interval": 5, "max_epochs": 2})


def test_a_run_that_would_never_validate_stops_at_start_up(demo_root, tmp_path):
    user_error(SettingError, "val_interval (5) is larger than max_epochs (2)", run_bundle, "training", TRAIN,
               bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=2, val_interval=5)
    assert not tmp_path.joinpath("models").exists()


@pytest.mark.parametrize("spacing", [1e308, 1e-9, float("inf"), 0.0])
def test_sample_pixel_spacing_must_be_in_a_sane_range(spacing):
    user_error(SettingError, "sample_pixel_spacing must be a finite number in [0.001, 1000.0]", check_settings,
               {"sample_pixel_spacing": spacing})


# ------------------------------------------------------------------------------------------------ honest resume
def test_resuming_on_another_data_set_is_refused_unless_overwrite(trained_bundle, demo_root, oasis_png_root, tmp_path):
    shutil.copytree(trained_bundle / "models", tmp_path / "models")
    saved = load_checkpoint(tmp_path / "models" / "last.pt")["metadata"]["dataset"]
    assert saved["dir"] == str(demo_root.resolve()) and saved["sizes"]["train"] > 0 and len(saved["fingerprint"]) == 16
    error = user_error(CheckpointError, "a resumed run would mix two data sets", run_bundle, "training", TRAIN,
                       bundle_root=str(tmp_path), dataset_dir=str(oasis_png_root), max_epochs=3, resume=True)
    assert f"trained on '{demo_root.resolve()}'" in str(error) and f"reads '{oasis_png_root}'" in str(error)
    assert saved["fingerprint"] in str(error)
    # another split of the same folder is another data set too
    user_error(CheckpointError, "mix two data sets", run_bundle, "training", TRAIN, bundle_root=str(tmp_path),
               dataset_dir=str(demo_root), max_epochs=3, resume=True, max_items=3)


def test_resuming_on_another_data_set_with_overwrite_continues_with_a_warning(tmp_path, caplog):
    saved = {"dir": "/data/a", "sizes": {"train": 4, "validate": 2}, "fingerprint": "0123456789abcdef"}
    torch.save({"metadata": {"dataset": saved}}, tmp_path / "last.pt")
    other = {**saved, "fingerprint": "fedcba9876543210"}
    user_error(CheckpointError, "(4 train, 2 validate slices, fingerprint 0123456789abcdef)", check_resumed_dataset,
               tmp_path / "last.pt", other)
    with caplog.at_level("WARNING"):
        check_resumed_dataset(tmp_path / "last.pt", other, overwrite=True)
    assert "resuming on the new data set as --overwrite true asks" in caplog.text
    check_resumed_dataset(tmp_path / "last.pt", dict(saved))  # the same data
    torch.save({"metadata": {}}, tmp_path / "last.pt")
    check_resumed_dataset(tmp_path / "last.pt", other)  # a checkpoint from before data sets were recorded


def test_a_best_model_without_a_training_state_gives_one_message_for_rerun_and_resume(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not read")
    messages = set()
    for resume in (False, True):
        error = user_error(CheckpointError, "nothing to resume", check_checkpoint_dir, tmp_path, resume=resume)
        messages.add(str(error))
    assert len(messages) == 1
    assert "pass --overwrite true (without --resume) to train again from the start" in messages.pop()
    assert check_checkpoint_dir(tmp_path, overwrite=True) is None


# ---------------------------------------------------------------------------------------------------- messages
def test_a_truncated_checkpoint_is_called_truncated(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(64)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = user_error(CheckpointError, "is truncated or corrupt", load_checkpoint, path)
    assert "neither a zip" not in str(error)


def test_a_fifo_input_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "slice.png"
    os.mkfifo(fifo)
    user_error(DatasetError, "is not a regular file", find_input_files, str(fifo))
    user_error(ImageFileError, "is not a regular file", read_input, fifo)


# ------------------------------------------------------------------------------------------- outputs vs inputs
def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(path)
    return path


def test_separate_folder_outputs_may_not_land_in_an_input_folder(tmp_path):
    # the probe's case: <d>/case1/case1.png, output_dir <d>, one folder per input named like it: <d>/case1/
    files = [_png(tmp_path / "case1" / "case1.png")]
    user_error(OutputPathError, f"would be written into '{tmp_path / 'case1'}', which holds input files",
               check_outputs, files, tmp_path, separate_folder=True)
    check_outputs(files, tmp_path / "out", separate_folder=True)


def test_an_output_folder_inside_a_recursive_glob_root_is_refused(tmp_path):
    files = [_png(tmp_path / "data" / "a" / "x.png")]
    glob = str(tmp_path / "data" / "**" / "*.png")
    for output_dir in (tmp_path / "data", tmp_path / "data" / "recon"):
        user_error(OutputPathError, "the root of a recursive input glob", check_outputs, files, output_dir,
                   input_specs=[glob])
    check_outputs(files, tmp_path / "recon", input_specs=[glob])


def test_tracking_uri_inside_the_data_or_on_a_non_database_file_is_refused(demo_root, tmp_path):
    inside = f"sqlite:///{demo_root / 'keras_png_slices_train' / 'mlruns.db'}"
    user_error(OutputPathError, "tracking_uri", check_output_dirs, {"tracking_uri": inside}, demo_root)
    text = tmp_path / "notes.db"
    text.write_text("my notes")
    user_error(OutputPathError, "is not an SQLite database", check_output_dirs, {"tracking_uri": f"sqlite:///{text}"})
    assert text.read_text() == "my notes"
    check_output_dirs({"tracking_uri": f"sqlite:///{tmp_path / 'new' / 'mlruns.db'}"})


def test_training_prior_does_not_replace_another_runs_learning_curves(trained_bundle, demo_root, tmp_path):
    shutil.copytree(trained_bundle / "models", tmp_path / "models", ignore=shutil.ignore_patterns("last.pt"))
    curves = tmp_path / "outputs" / "prior_learning_curves.png"
    _png(curves)
    before = curves.read_bytes()
    user_error(OutputPathError, f"'{curves}' already exists and would be replaced", run_bundle, "training_prior",
               TRAIN_PRIOR, bundle_root=str(tmp_path), dataset_dir=str(demo_root))
    assert curves.read_bytes() == before


# ------------------------------------------------------------------------------------ checkpoints by their size
def padded_checkpoint(source: Path, target: Path, padding_bytes: int) -> Path:
    """``source`` re-zipped (deflated) with an extra entry of ``padding_bytes`` zeros: a small file, a large load."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        prefix = original.namelist()[0].split("/")[0]
        for entry in original.infolist():
            archive.writestr(entry, original.read(entry))
        with archive.open(f"{prefix}/data/999", "w") as handle:
            block = bytes(2**20)
            for _ in range(padding_bytes // len(block)):
                handle.write(block)
    return target


def test_oversized_checkpoints_are_refused_before_loading(tmp_path, monkeypatch):
    vqvae = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, **TINY_NETWORK)
    prior = GatedPixelCNN(spatial_dims=2, num_embeddings=TINY_NETWORK["num_embeddings"], channels=8, num_layers=2)
    optimizer = torch.optim.Adam(vqvae.parameters())
    save_checkpoint(tmp_path / "model.pt", {"model": vqvae.state_dict(), "metadata": {}})
    save_checkpoint(tmp_path / "last.pt", {"model": vqvae.state_dict(), "optimizer": optimizer.state_dict()})
    save_checkpoint(tmp_path / "prior.pt", {"model": prior.state_dict(), "metadata": {}})
    padding = 80 * 2**20  # the bound for these tiny networks is 64 MiB and 4x their weights
    bad = {name: padded_checkpoint(tmp_path / name, tmp_path / f"big_{name}", padding)
           for name in ("model.pt", "last.pt", "prior.pt")}
    assert all(path.stat().st_size < 2**20 for path in bad.values())
    load_network_weights(vqvae, tmp_path / "model.pt")  # the real ones load

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before its size was checked")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match=r"'.*big_model.pt' unpacks to 8\d,\d{3},\d{3} bytes, more than"):
        load_network_weights(vqvae, bad["model.pt"])
    loader = TrainingCheckpointLoader(bad["last.pt"], {"model": vqvae, "optimizer": optimizer})
    with pytest.raises(CheckpointError, match="big_last.pt' unpacks to"):
        loader._load(None)
    with pytest.raises(CheckpointError, match="big_prior.pt' unpacks to"):
        load_prior(bad["prior.pt"], network=prior)


# --------------------------------------------------------------------------------- damaged histories and caches
@pytest.mark.parametrize("content", ['[{"epoch": 1, "loss": 0.5}, {"epo', '{"epoch": 1}', '[1, 2]'])
def test_a_damaged_history_is_one_line_saying_how_to_recover(tmp_path, content):
    history = tmp_path / "training_history.json"
    history.write_text(content)
    with pytest.raises(HistoryFileError, match=f"training history '{history}' is damaged .*delete it.*--overwrite true"):
        read_history(history)


def test_evaluating_refuses_a_damaged_history_before_writing_any_report(trained_bundle, demo_root, tmp_path):
    bundle = shutil.copytree(trained_bundle, tmp_path / "bundle")
    (bundle / "models" / "training_history.json").write_text('[{"epoch": 1, "loss": 0.5}, {"ep')
    output_dir = tmp_path / "report"
    user_error(HistoryFileError, "training_history.json' is damaged", run_bundle, "evaluating", EVALUATE,
               bundle_root=str(bundle), output_dir=str(output_dir), dataset_dir=str(demo_root))
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_a_tampered_code_cache_is_one_line_and_overwrite_encodes_again(tmp_path, demo_root, one_thread):
    vqvae = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, **TINY_NETWORK).eval()
    cache = tmp_path / "codes_train.pt"
    kwargs = {"dataset_dir": str(demo_root)}
    entry = load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32)
    tampered = dict(entry)
    tampered["codes"] = entry["codes"].clone()
    tampered["codes"][0, 0, 0] = 999  # a codebook of 32
    save_checkpoint(cache, tampered)
    with pytest.raises(CheckpointError, match=rf"code cache '{cache}' is damaged \(it holds codes from \d+ to 999, "
                                              r"outside the VQ-VAE's codebook \[0, 32\)\); delete it, or pass --overwrite"):
        load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32)
    tampered["codes"] = entry["codes"].float()
    save_checkpoint(cache, tampered)
    with pytest.raises(CheckpointError, match="not an int16/int32 tensor"):
        load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32)
    again = load_or_encode_codes(cache, vqvae, "sha", kwargs, "train", 32, overwrite=True)
    assert torch.equal(again["codes"], entry["codes"])


# --------------------------------------------------------------------------------------- MONAI's config warning
def test_monais_config_warning_is_filtered_once_our_hook_is_installed(tmp_path):
    from monai.bundle.scripts import create_workflow

    from monai_vqbrain.workflows import install_error_hook

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"run": [], "initialize": [], "finalize": []}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        install_error_hook()
        try:
            create_workflow(config_file=str(config), workflow_type="train")
        except Exception:  # a config without the properties a training workflow needs: only the warning matters
            pass
        other = warnings.warn_explicit("parsing config_file x", UserWarning, "elsewhere.py", 1, module="elsewhere")
    assert other is None
    messages = [str(w.message) for w in caught]
    assert not any(m.startswith("parsing config_file") and str(config) in m for m in messages), messages
    assert any(m == "parsing config_file x" for m in messages), "only MONAI's own warning is filtered"
