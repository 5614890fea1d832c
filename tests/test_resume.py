"""Resuming a training run: the best model stays the best, and the resumed run follows the new settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO_ROOT, TINY_OVERRIDES, TRAIN, run_bundle, user_error

from monai_vqbrain.errors import CheckpointError, SettingError
from monai_vqbrain.utils import read_model, save_model


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, demo_root):
    """Checkpoints of a 1-epoch tiny run; treat as read-only."""
    bundle_root = tmp_path_factory.mktemp("one_epoch")
    run_bundle("training", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), max_epochs=1)
    return bundle_root / "models"


def _copy(models, tmp_path):
    shutil.copytree(models, tmp_path / "models")
    return tmp_path / "models"


def test_replayed_epoch_does_not_replace_a_better_best_model(one_epoch_run, demo_root, tmp_path):
    # killed after model.pt of epoch 2 was saved but before last.pt: model.pt is one epoch ahead of last.pt
    models = _copy(one_epoch_run, tmp_path)
    state, metadata = read_model(models / "model.pt")
    save_model(models / "model.pt", state, {**metadata, "epoch": 2, "key_metric": 0.999})
    before = (models / "model.pt").read_bytes()
    run_bundle("training", TRAIN, bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=2, resume=True)
    history = json.loads((models / "training_history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["val_ssim"] < 0.999
    assert (models / "model.pt").read_bytes() == before, "a worse epoch was saved as the best model"


def test_resume_with_more_epochs_stretches_the_schedule(one_epoch_run, demo_root, tmp_path):
    models = _copy(one_epoch_run, tmp_path)
    lr_after_one = torch.load(models / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    run_bundle("training", TRAIN, bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=2, resume=True)
    last = torch.load(models / "last.pt", weights_only=True)
    assert last["lr_scheduler"]["T_max"] == 2
    assert last["optimizer"]["param_groups"][0]["lr"] <= lr_after_one, "the learning rate climbed again"


def test_resume_of_a_finished_schedule_follows_the_longer_schedule(tmp_path):
    # a 2-epoch cosine run resumed to 4 epochs: epochs 3 and 4 train on the 4-epoch cosine, not at its floor
    from ignite.engine import Engine, Events

    from monai_vqbrain.handlers import TrainingCheckpointLoader
    from monai_vqbrain.utils import save_checkpoint

    def schedule(max_epochs):
        network = torch.nn.Linear(2, 2)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=2e-5)
        return network, optimizer, scheduler

    network, optimizer, scheduler = schedule(2)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    trainer = Engine(lambda engine, batch: None)
    trainer.run([0], max_epochs=2)
    save_checkpoint(tmp_path / "last.pt", {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                                           "lr_scheduler": scheduler.state_dict(), "trainer": trainer.state_dict()})

    network, optimizer, scheduler = schedule(4)
    rates = []
    resumed = Engine(lambda engine, batch: rates.append(optimizer.param_groups[0]["lr"]))
    resumed.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
    TrainingCheckpointLoader(tmp_path / "last.pt", {"model": network, "optimizer": optimizer,
                                                    "lr_scheduler": scheduler}).attach(resumed)
    resumed.run([0], max_epochs=4)
    planned = schedule(4)[2]
    expected = [planned.step() or planned.get_last_lr()[0] for _ in range(3)][1:]
    assert rates == pytest.approx(expected), "the resumed epochs did not follow the 4-epoch schedule"
    assert rates[0] > 10 * 2e-5


def test_resume_with_another_image_size_is_refused_before_loading_data(one_epoch_run, tmp_path):
    _copy(one_epoch_run, tmp_path)
    user_error(CheckpointError, "was trained with image_size=32, but image_size=64", run_bundle, "training", TRAIN,
               bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "not_read"), max_epochs=3, resume=True,
               image_size=64)


def test_resume_with_nothing_left_to_train_says_so(one_epoch_run, tmp_path):
    _copy(one_epoch_run, tmp_path)
    user_error(SettingError, "nothing left to train", run_bundle, "training", TRAIN, bundle_root=str(tmp_path),
               dataset_dir=str(tmp_path / "not_read"), max_epochs=1, resume=True)


def test_stale_temporary_checkpoints_are_removed_on_start(one_epoch_run, demo_root, tmp_path):
    models = _copy(one_epoch_run, tmp_path)
    stale = [models / ".last.k3v_9x2a.pt", models / ".model.abcdefgh.pt", models / ".training_history.0a1b2c3d.json"]
    for path in stale:
        path.write_bytes(b"")
    unrelated = models / ".notes.abcdefgh.txt"
    unrelated.write_text("mine")
    run_bundle("training", TRAIN, bundle_root=str(tmp_path), dataset_dir=str(demo_root), max_epochs=2, resume=True)
    assert not any(path.exists() for path in stale)
    assert unrelated.read_text() == "mine"


# runs `python -m monai.bundle <argv>` with a Ctrl-C (KeyboardInterrupt) at the n-th optimizer step, as a user's
_CTRL_C = textwrap.dedent(
    """
    import os, runpy, sys
    import torch
    import monai.bundle

    n = int(sys.argv[1])
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    torch.optim.Adam.step = step
    sys.argv = [os.path.join(os.path.dirname(monai.bundle.__file__), "__main__.py"), *sys.argv[2:]]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    """
)


def _bundle_command(bundle_root, demo_root, **settings) -> list[str]:
    overrides = {**TINY_OVERRIDES, "bundle_root": str(bundle_root), "dataset_dir": str(demo_root), **settings}
    return ["run", "training", "--config_file", TRAIN,
            *[part for key, value in overrides.items()
              for part in (f"--{key}", value if isinstance(value, str) else json.dumps(value).replace(" ", ""))]]


def test_ctrl_c_prints_one_line_and_the_resume_log_names_the_epoch_once(demo_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MONAI_VQBRAIN_TRACEBACK": ""}
    # 4 training batches an epoch: the 6th step is in epoch 2, after epoch 1's checkpoints
    interrupted = subprocess.run([sys.executable, "-c", _CTRL_C, "6", *_bundle_command(tmp_path, demo_root, max_epochs=3)],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    output = interrupted.stdout + interrupted.stderr
    assert interrupted.returncode == 130, output[-3000:]
    assert interrupted.stderr.strip().splitlines()[-1] == "interrupted at epoch 2; resume with `--resume true`"
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]

    resumed = subprocess.run([sys.executable, "-m", "monai.bundle",
                              *_bundle_command(tmp_path, demo_root, max_epochs=3, resume=True)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "1 epoch(s) done, continuing with epoch 2 of 3" in output
    assert "resuming from iteration 0" not in output, "ignite's line would say epoch 0"
    # the finished training says what comes next, with its own overrides but without --resume
    evaluate = next(line for line in output.splitlines() if "training finished; to evaluate it" in line)
    assert "run evaluating --config_file" in evaluate and f"--dataset_dir {demo_root}" in evaluate
    assert "--resume" not in evaluate and "--max_epochs" not in evaluate
    assert any("to train the prior" in line and "run training_prior" in line for line in output.splitlines())


# as _CTRL_C, but the process gets SIGTERM (what `timeout`, `docker stop` and Slurm send) at the n-th optimizer step
_SIGTERM = _CTRL_C.replace("raise KeyboardInterrupt", "os.kill(os.getpid(), signal.SIGTERM)").replace(
    "import os, runpy, sys", "import os, runpy, signal, sys"
)


def test_sigterm_is_handled_as_ctrl_c_one_line_resume_hint_locks_and_temporary_files_cleaned(demo_root, tmp_path):
    # issue 25: SIGTERM exited 143 with no line, and left the lock files for the next run to clean
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MONAI_VQBRAIN_TRACEBACK": ""}
    terminated = subprocess.run([sys.executable, "-c", _SIGTERM, "6", *_bundle_command(tmp_path, demo_root, max_epochs=3)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    output = terminated.stdout + terminated.stderr
    assert terminated.returncode == 143, output[-3000:]  # 128 + SIGTERM, as a shell reports it
    assert terminated.stderr.strip().splitlines()[-1] == "terminated (SIGTERM) at epoch 2; resume with `--resume true`"
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert "terminating due to exception" not in output, output[-3000:]
    left = sorted(p.name for p in tmp_path.rglob(".*") if p.is_file())
    assert left == [], left  # no .vqbrain.lock, no .<name>.<random>.pt
    resumed = subprocess.run([sys.executable, "-m", "monai.bundle",
                              *_bundle_command(tmp_path, demo_root, max_epochs=3, resume=True)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "taking over the stale lock" not in resumed.stdout + resumed.stderr


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again(demo_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MONAI_VQBRAIN_TRACEBACK": ""}
    interrupted = subprocess.run([sys.executable, "-c", _CTRL_C, "2", *_bundle_command(tmp_path, demo_root)],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert interrupted.stderr.strip().splitlines()[-1] == (
        "interrupted at epoch 1, before its first checkpoint; run the command again to start over")


def test_ctrl_c_while_an_epoch_is_validated_stops_after_that_epochs_checkpoint(tmp_path):
    # issue 25: a Ctrl-C right after an epoch's validation threw the epoch away; the resumed run trained it again
    import signal

    from ignite.engine import Engine, Events

    from monai_vqbrain.errors import RunInterrupted
    from monai_vqbrain.handlers import InterruptHandler, TrainingCheckpointSaver
    from monai_vqbrain.utils.checkpoint import load_checkpoint

    last = tmp_path / "last.pt"
    engine = Engine(lambda engine, batch: None)
    InterruptHandler(resume_file=last).attach(engine)
    validated = []

    def validate(engine: Engine) -> None:
        validated.append(engine.state.epoch)
        if engine.state.epoch == 2:
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, while epoch 2 is being validated

    engine.add_event_handler(Events.EPOCH_COMPLETED, validate)
    TrainingCheckpointSaver(last, {"model": torch.nn.Linear(2, 2)}).attach(engine)
    with pytest.raises(RunInterrupted, match=r"^interrupted at epoch 2; resume with"):
        engine.run(range(3), max_epochs=4)
    assert validated == [1, 2] and load_checkpoint(last)["trainer"]["iteration"] == 2 * 3, "epoch 2 is done, not lost"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C stops at once again afterwards"


def test_a_second_ctrl_c_while_one_is_held_stops_at_once():
    import signal

    from monai_vqbrain.handlers import EpochEndInterruptHold

    hold = EpochEndInterruptHold()
    hold.hold()
    signal.raise_signal(signal.SIGINT)  # held: the epoch's checkpoint is still to be written
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # the user insists
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    hold.release()  # nothing held any more: no second KeyboardInterrupt
