"""Kill a training run at chosen instants, checkpoint writes included, then resume it.

After each resume the checkpoint set must be consistent: ``model.pt`` holds weights that score the key metric its
metadata claims, that metric is the best of the run's history, the history has every epoch once, and no temporary
file is left behind. The kill is ``os._exit`` from inside ``os.replace`` (the atomic rename) or ``torch.save``, in a
subprocess, so nothing after it runs, as with SIGKILL or a power cut of the process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
from conftest import CONFIGS, REPO_ROOT, TINY_OVERRIDES, TRAIN, run_bundle
from monai.bundle import ConfigParser

from monai_vqbrain.utils import load_checkpoint, load_network_weights, read_model, read_model_metadata

KILLED = 86
MAX_EPOCHS = 3
SETTINGS = {**TINY_OVERRIDES, "amp": False, "max_epochs": MAX_EPOCHS}

# runs the bundle's training and exits with status KILLED at the n-th call of the chosen kind (counting only renames
# onto files named `target`, when given); argv: kind, n, target, settings, KILLED
_KILLER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from monai.bundle import run

    kind, n, target, settings, killed = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
    calls = {"replace": 0, "save": 0}
    real_replace, real_save = os.replace, torch.save

    def replace(source, destination):
        calls["replace"] += not target or os.path.basename(destination) == target
        if kind == "replace_before" and calls["replace"] == n:
            os._exit(killed)  # the temporary file is written, the rename never happens
        real_replace(source, destination)
        if kind == "replace_after" and calls["replace"] == n:
            os._exit(killed)  # the rename happened, nothing after it

    def save(obj, f, *args, **kwargs):
        calls["save"] += 1
        if kind == "save_partial" and calls["save"] == n:
            with open(f, "wb") as handle:
                handle.write(b"PK\\x03\\x04 half a checkpoint")
            os._exit(killed)
        real_save(obj, f, *args, **kwargs)

    os.replace, torch.save = replace, save
    run(run_id="training", **settings)
    """
)


def _validation_ssim(checkpoint, demo_root, scratch) -> float:
    """The validation key metric of ``checkpoint``'s weights, computed by the bundle's own validator."""
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({**SETTINGS, "bundle_root": str(scratch), "dataset_dir": str(demo_root)})
    evaluator = parser.get_parsed_content("validate#evaluator")  # its best-model saver writes into scratch
    load_network_weights(parser.get_parsed_content("network"), checkpoint)
    evaluator.run()
    return float(evaluator.state.metrics["val_ssim"])


def _kill(kind: str, n: int, bundle_root, demo_root, target: str = "") -> None:
    settings = {"config_file": TRAIN, "logging_file": str(CONFIGS / "logging.conf"),
                "meta_file": str(CONFIGS / "metadata.json"), "bundle_root": str(bundle_root),
                "dataset_dir": str(demo_root), **SETTINGS}
    killed = subprocess.run([sys.executable, "-c", _KILLER, kind, str(n), target, json.dumps(settings), str(KILLED)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == KILLED, killed.stderr[-3000:]


def _assert_consistent(models, demo_root, scratch) -> None:
    history = json.loads((models / "training_history.json").read_text())
    assert [record["epoch"] for record in history] == list(range(1, MAX_EPOCHS + 1))
    assert load_checkpoint(models / "last.pt")["metadata"]["epoch"] == MAX_EPOCHS
    claimed = read_model_metadata(models / "model.pt")
    assert claimed["key_metric"] >= max(record["val_ssim"] for record in history) - 1e-6
    assert _validation_ssim(models / "model.pt", demo_root, scratch) == pytest.approx(
        claimed["key_metric"], abs=1e-5
    ), "model.pt's weights do not score the key metric it claims"
    assert sorted(p.name for p in models.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("kind", "n"),
    [
        ("replace_after", 4),  # epoch 2's first file is in place, the rest of the epoch's set is not
        ("replace_before", 4),  # killed just before that rename: a temporary file is left
        ("replace_after", 5),
        ("save_partial", 3),  # killed half-way through writing a checkpoint
        ("replace_after", 1),  # only the first file of epoch 1 exists: nothing to resume, start over
    ],
)
def test_kill_at_any_instant_then_resume_keeps_checkpoints_consistent(kind, n, demo_root, tmp_path):
    bundle_root = tmp_path / "bundle"
    _kill(kind, n, bundle_root, demo_root)
    models = bundle_root / "models"
    resumable = (models / "last.pt").is_file()
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), **SETTINGS,
               resume=resumable, overwrite=not resumable)
    _assert_consistent(models, demo_root, tmp_path / "scratch")


def test_kill_between_the_metadata_file_and_its_weights_keeps_the_pair_consistent(demo_root, tmp_path):
    # epoch 2's model.json (describing epoch 2's weights) is in place, its model.pt is not: model.pt still holds
    # epoch 1's weights, which the metadata file's previous entry describes
    bundle_root = tmp_path / "bundle"
    _kill("replace_after", 2, bundle_root, demo_root, target="model.json")
    models = bundle_root / "models"
    assert json.loads((models / "model.json").read_text())["metadata"]["epoch"] == 2
    assert read_model_metadata(models / "model.pt")["epoch"] == 1
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), **SETTINGS, resume=True)
    _assert_consistent(models, demo_root, tmp_path / "scratch")


def test_kill_after_the_best_model_and_a_worse_replay_keep_the_best(demo_root, tmp_path):
    # killed right after the last epoch's new best model.pt (early training improves every epoch), before its
    # last.pt: the resumed run replays that epoch from the state of the one before
    bundle_root = tmp_path / "bundle"
    _kill("replace_after", MAX_EPOCHS, bundle_root, demo_root, target="model.pt")
    models = bundle_root / "models"
    assert read_model_metadata(models / "model.pt")["epoch"] == MAX_EPOCHS
    assert load_checkpoint(models / "last.pt")["metadata"]["epoch"] == MAX_EPOCHS - 1
    # settings that all but stop learning (gradients clipped to nothing leave Adam only its decaying momentum; the
    # codebook barely moves) make the replay worse than the saved best; the first assertion checks that it was
    frozen = {"max_grad_norm": 1e-12, "network_def#decay": 1 - 1e-9, "network_def#dead_code_threshold": 0.0}
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), **{**SETTINGS, **frozen},
               resume=True)
    history = json.loads((models / "training_history.json").read_text())
    assert history[-1]["val_ssim"] < read_model_metadata(models / "model.pt")["key_metric"]
    _assert_consistent(models, demo_root, tmp_path / "scratch")


# one process imports torch, MONAI and the package once, then forks a training run per kill point, which SIGKILLs
# itself when its trainer completes the chosen global iteration (mid-epoch, between the epoch-end saves); each run
# after the first resumes the one before. After each kill the models folder is copied to snapshots/<n> for the test.
# Forking a process that has run no torch work yet (one thread) keeps the imports out of every run's time.
# argv: settings (JSON, the run's keyword arguments), kill points (JSON list), snapshot folder
_SIGKILL_CHAIN = textwrap.dedent(
    """
    import json, os, shutil, signal, sys
    import torch
    from monai.bundle import run
    from monai_vqbrain.engines import VQVAETrainer

    settings, kill_points, snapshots = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    iteration = VQVAETrainer._iteration
    for n, kill_at in enumerate(kill_points):
        child = os.fork()
        if child == 0:
            def killing_iteration(self, engine, batch, kill_at=kill_at):
                output = iteration(self, engine, batch)
                if engine.state.iteration == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return output

            VQVAETrainer._iteration = killing_iteration
            try:
                run(run_id="training", **settings, resume=n > 0)
            finally:
                os._exit(0)  # never back into this loop: the kill did not happen
        status = os.waitpid(child, 0)[1]
        print(f"run {n}: killed at iteration {kill_at}: status {status}", flush=True)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            sys.exit(f"run {n} was not killed at iteration {kill_at} (status {status})")
        shutil.copytree(os.path.join(settings["bundle_root"], "models"), os.path.join(snapshots, str(n)))
    """
)


def test_sigkill_at_seeded_random_iterations_then_resume_keeps_history_and_best_model(demo_root, tmp_path):
    from monai_vqbrain.data import get_datalist
    from monai_vqbrain.utils.checkpoint import check_finite_weights

    per_epoch = -(-len(get_datalist(demo_root, "train")) // SETTINGS["batch_size"])
    # after epoch 1, so that every kill leaves a training state to resume (the state before is covered above)
    kill_points = sorted(random.Random(19).sample(range(per_epoch + 1, MAX_EPOCHS * per_epoch + 1), 5))
    bundle_root, snapshots = tmp_path / "bundle", tmp_path / "snapshots"
    settings = {"config_file": TRAIN, "logging_file": str(CONFIGS / "logging.conf"),
                "meta_file": str(CONFIGS / "metadata.json"), "bundle_root": str(bundle_root),
                "dataset_dir": str(demo_root), **SETTINGS}
    chain = subprocess.run([sys.executable, "-c", _SIGKILL_CHAIN, json.dumps(settings), json.dumps(kill_points),
                            str(snapshots)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert chain.returncode == 0, chain.stdout[-2000:] + chain.stderr[-3000:]
    assert chain.stdout.count("killed at iteration") == len(kill_points), chain.stdout
    for n, kill_at in enumerate(kill_points):
        models = snapshots / str(n)
        saved = (kill_at - 1) // per_epoch  # the epochs completed before the kill
        history = json.loads((models / "training_history.json").read_text())
        assert [record["epoch"] for record in history] == list(range(1, saved + 1)), (n, kill_at)
        assert load_checkpoint(models / "last.pt")["metadata"]["epoch"] == saved
        weights, metadata = read_model(models / "model.pt")
        check_finite_weights(weights, f"model.pt after kill {n}")
        assert metadata["key_metric"] == pytest.approx(max(r["val_ssim"] for r in history), abs=1e-6)
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), **SETTINGS, resume=True)
    models = bundle_root / "models"
    check_finite_weights(read_model(models / "model.pt")[0], "model.pt")
    best_in_history = max(r["val_ssim"] for r in json.loads((models / "training_history.json").read_text()))
    assert read_model_metadata(models / "model.pt")["key_metric"] == pytest.approx(best_in_history, abs=1e-6)
    _assert_consistent(models, demo_root, tmp_path / "scratch")
