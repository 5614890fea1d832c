"""Small utilities: boolean flags from the command line, atomic writes, checkpoint safety."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from monai_vqbrain.errors import CheckpointError
from monai_vqbrain.utils import as_bool, atomic_write_text, load_checkpoint, save_checkpoint


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("false", False), ("False", False), ("TRUE", True),
                                                 ("0", False), ("yes", True), (0, False), (1, True), (None, False)])
def test_as_bool(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_other_values():
    with pytest.raises(ValueError, match="amp must be true or false"):
        as_bool("sometimes", "amp")


def test_atomic_write_refuses_overwrite_when_asked(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first")
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "second", overwrite=False)
    assert path.read_text() == "first"
    assert list(tmp_path.iterdir()) == [path], "no temporary files are left behind"


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoint_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_round_trip_and_missing_file(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "metadata": {"image_size": 32}})
    assert load_checkpoint(path)["metadata"]["image_size"] == 32
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_best_metric_is_restored_on_resume(tmp_path):
    from ignite.engine import Engine

    from monai_vqbrain.handlers import BestMetricRestorer

    best = save_checkpoint(tmp_path / "model.pt", {"model": {}, "metadata": {"key_metric": 0.93, "epoch": 7}})
    trainer, validator = Engine(lambda engine, batch: None), Engine(lambda engine, batch: None)
    validator.state.best_metric = -1.0
    BestMetricRestorer(best, validator, enabled="false").attach(trainer)
    trainer.run([0], max_epochs=1)
    assert validator.state.best_metric == -1.0, "a fresh run must not inherit the old best metric"
    trainer = Engine(lambda engine, batch: None)
    BestMetricRestorer(best, validator, enabled=True).attach(trainer)
    trainer.run([0], max_epochs=1)
    # the first validation after resuming must beat 0.93 to replace the saved best model
    assert validator.state.best_metric == pytest.approx(0.93) and validator.state.best_metric_epoch == 7


def test_atomic_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


def test_full_disk_is_a_one_line_write_error(tmp_path, monkeypatch):
    import errno

    from monai_vqbrain.errors import OutputWriteError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputWriteError, match=r"cannot write '.*a.json': No space left on device; free some space"):
        atomic_write_text(tmp_path / "a.json", "{}")
    monkeypatch.undo()
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("basic_ios::clear: iostream error")))
    with pytest.raises(OutputWriteError, match="cannot write checkpoint .*disk full"):
        save_checkpoint(tmp_path / "m.pt", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == [], "no temporary file may be left behind"


# ---------------------------------------------------------------------------------------------------------------
# model files: the state dict alone, its metadata beside it


def test_model_file_and_its_metadata_stay_consistent_when_the_second_write_fails(tmp_path, monkeypatch):
    import os

    from monai_vqbrain.utils import metadata_file, read_model, save_model

    network = torch.nn.Linear(3, 2)
    path = tmp_path / "model.pt"
    save_model(path, network.state_dict(), {"epoch": 1})
    first = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        network.weight.add_(1.0)
    real_replace = os.replace

    def killed_at_the_weights(source, destination):
        if os.path.basename(destination) == "model.pt":
            raise KeyboardInterrupt  # as a kill: the metadata file is replaced, the weights are not
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", killed_at_the_weights)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, network.state_dict(), {"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads(metadata_file(path).read_text())["metadata"] == {"epoch": 2}
    state, metadata = read_model(path)
    assert metadata == {"epoch": 1} and all(torch.equal(state[k], v) for k, v in first.items())
    torch.nn.Linear(3, 2).load_state_dict(torch.load(path, weights_only=True))  # a plain state dict, strict
    save_model(path, network.state_dict(), {"epoch": 2})
    assert read_model(path)[1] == {"epoch": 2}


def test_model_file_without_matching_metadata_has_none(tmp_path, caplog):
    from monai_vqbrain.utils import read_model_metadata, save_model

    path = tmp_path / "model.pt"
    save_model(path, torch.nn.Linear(3, 2).state_dict(), {"epoch": 1})
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)  # replaced by hand: the metadata describes other weights
    with caplog.at_level("WARNING"):
        assert read_model_metadata(path) == {}
    assert "describes other weights" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# figures


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("case_113_slice_15.nii.png", 22, "case_113_slice_\n15.nii.png"),  # textwrap: "...nii.pn" / "g"
        ("sample_007", 22, "sample_007"),
        ("a_very_long_part_without_breaks.png", 8, "a_very_\nlong_\npart_\nwithout_\nbreaks.png"),
    ],
)
def test_wrap_label_breaks_only_between_the_parts_of_a_name(text, width, expected):
    from monai_vqbrain.utils.io import wrap_label

    assert wrap_label(text, width) == expected
    assert wrap_label(text, width).replace("\n", "") == text


@pytest.mark.parametrize("epochs", [[1], [1, 2], list(range(1, 31))])
def test_epoch_axes_have_whole_number_ticks(epochs):
    from monai_vqbrain.utils.io import epoch_axis, pyplot

    figure, axis = pyplot().subplots()
    axis.plot(epochs, [float(e) for e in epochs], marker="o")
    epoch_axis(axis, epochs)
    figure.canvas.draw()
    ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
    pyplot().close(figure)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    if len(epochs) == 1:
        assert ticks == [1]


def test_nearest_training_slices_names_sit_with_their_own_images(tmp_path, monkeypatch):
    from monai_vqbrain.prior import figures

    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: drawn.setdefault("figure", figure))
    samples, nearest = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    names = [f"case_{i}13_slice_15.nii.png" for i in range(3)]
    figures.plot_nearest_training_slices(samples, nearest, tmp_path / "n.png", ["s0", "s1", "s2"], names, [0.5] * 3)
    axes = drawn["figure"].axes
    upper, lower = axes[:3], axes[3:6]
    assert [a.get_title() for a in upper] == ["s0", "s1", "s2"]
    # a training slice's name is under its own image, not a title between the rows (under the sample above)
    assert all(a.get_title() == "" for a in lower)
    assert [a.get_xlabel().split("\nSSIM")[0].replace("\n", "") for a in lower] == names


def test_model_metadata_file_that_is_not_one_is_refused_in_one_line(tmp_path):
    from monai_vqbrain.utils import metadata_file, read_model_metadata, save_model

    path = tmp_path / "model.pt"
    save_model(path, torch.nn.Linear(3, 2).state_dict(), {"epoch": 1})
    metadata_file(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        read_model_metadata(path)
    metadata_file(path).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="is not the metadata file of"):
        read_model_metadata(path)
    with open(metadata_file(path), "wb") as handle:
        handle.truncate(17 * 2**20)  # sparse: no disk used
    with pytest.raises(CheckpointError, match="more than a model's metadata"):
        read_model_metadata(path)
