"""The inferring workflow's safety: bad, missing, duplicate or linked input files, outputs that would replace inputs,
left-over temporary files, and checkpoints of another network, with non-finite weights or that try to run code."""

from __future__ import annotations

import csv
import logging
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    BAD_AFFINES,
    INFER,
    NIFTI_AFFINE,
    TINY_OVERRIDES,
    VOLUME,
    brain_like_slice,
    brain_like_volume,
    finishes,
    grey_png,
    infer,
    odd_grey,
    save_nifti,
    save_png,
    save_with_affine,
    user_error,
    volume_files,
    without_direction,
)
from ignite.engine import Events
from PIL import Image

from monai_vqbrain.data import PadToSquared, ResizeSquared
from monai_vqbrain.data.nifti import (
    VolumeSlices,
)
from monai_vqbrain.errors import (
    CheckpointError,
    DatasetError,
    ImageFileError,
    InputsSkippedError,
    OutputWriteError,
    SettingError,
)
from monai_vqbrain.inference import (
    METRICS_FILE,
    LoadInputd,
    OutputPathError,
    find_input_files,
    read_input,
)


def _truncated_nifti(tmp_path: Path) -> Path:
    path = save_nifti(tmp_path / "truncated.nii.gz", brain_like_volume(VOLUME, seed=1))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _truncated_png(tmp_path: Path) -> Path:
    path = save_png(tmp_path / "truncated.png", brain_like_slice(64, 1))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _nifti_with(name: str, data: np.ndarray):
    return lambda folder: save_nifti(folder / name, data)


def _file_with(name: str, content: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return make


def _with_value(value: float) -> np.ndarray:
    data = brain_like_volume(VOLUME, seed=1).astype(np.float32)
    data[1, 2, 3] = value
    return data


BAD_FILES = {
    "corrupt png": (_file_with("corrupt.png", b"\x89PNG\r\n junk"), "not a readable image"),
    "truncated png": (_truncated_png, "truncated.png"),
    "truncated nifti": (_truncated_nifti, "truncated"),
    "not an image": (_file_with("notes.txt", b"hello"), "expected a PNG (.png) or NIfTI (.nii, .nii.gz) file"),
    "not a nifti": (_file_with("text.nii", b"hello"), "expected a NIfTI"),
    "4D volume": (_nifti_with("4d.nii.gz", np.zeros((24, 28, 20, 3), np.int16)), "expected a 3D volume"),
    "thin volume": (_nifti_with("thin.nii.gz", np.zeros((24, 3, 20), np.int16)), "at least 16 pixels"),
    "tiny png": (lambda p: save_png(p / "tiny.png", np.zeros((8, 40), np.uint8)), "at least 16 pixels"),
    "no axis directions": (without_direction("flat.nii.gz", VOLUME), "expected a valid voxel-to-world affine"),
    "nan": (_nifti_with("nan.nii.gz", _with_value(np.nan)), "NaN or infinite"),
    "inf": (_nifti_with("inf.nii.gz", _with_value(np.inf)), "NaN or infinite"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_is_named_with_what_was_expected(tmp_path, kind):
    make, expected = BAD_FILES[kind]
    path = make(tmp_path)
    error = user_error(ImageFileError, expected, read_input, path)
    assert str(path) in str(error)


def test_single_bad_input_fails_the_run_with_its_own_error_and_leaves_nothing(trained_bundle, tmp_path):
    path = _nifti_with("4d.nii.gz", np.zeros((24, 28, 20, 3), np.int16))(tmp_path)
    user_error(ImageFileError, f"'{path}' is a 4D volume", infer, trained_bundle, str(path), tmp_path / "out")
    assert not any((tmp_path / "out").glob("*")), "a run that reconstructed nothing writes nothing"
    # so the run, repeated once the file is mended, is not refused for an earlier run's outputs
    _nifti_with("4d.nii.gz", np.random.default_rng(0).integers(0, 900, (24, 28, 20), dtype=np.int16))(tmp_path)
    [row] = infer(trained_bundle, str(path), tmp_path / "out")
    assert row["error"] == "" and Path(row["reconstruction"]).is_file()


def test_all_inputs_bad_is_an_error(trained_bundle, input_dir, tmp_path):
    user_error(DatasetError, "none of the 2 input files", infer, trained_bundle, str(input_dir / "bad*"),
               tmp_path / "out")
    assert not any((tmp_path / "out").glob("*"))


def test_the_table_names_files_by_absolute_paths(trained_bundle, input_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [row] = infer(trained_bundle, str(input_dir / "grey.png"), Path("out"))
    for column in ("input", "reconstruction", "codes"):
        assert Path(row[column]).is_absolute() and Path(row[column]).is_file(), (column, row[column])


@pytest.mark.parametrize("kind", ["missing", "empty folder", "glob"])
def test_inputs_that_name_no_file(trained_bundle, tmp_path, kind):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    spec, expected = {
        "missing": (tmp_path / "no_such_file.png", "does not exist"),
        "empty folder": (tmp_path / "empty", "holds no PNG or NIfTI files"),
        "glob": (tmp_path / "*.nii.gz", "matched no files"),
    }[kind]
    user_error(DatasetError, str(spec), infer, trained_bundle, str(spec), tmp_path / "out")


def test_messages_name_absolute_paths_when_given_relative_ones(trained_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for spec, expected in (("nope.png", "does not exist"), ("empty", "holds no PNG"), ("*.nii.gz", "matched no")):
        error = user_error(DatasetError, f"'{tmp_path / spec}'", infer, trained_bundle, spec, Path("out"))
        assert expected in str(error)
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        save_png(tmp_path / folder / "slice.png", odd_grey())
    user_error(OutputPathError, f"'{tmp_path / 'two' / 'slice.png'}' would both write '{tmp_path / 'out'}", infer,
               trained_bundle, "*/slice.png", Path("out"))


def test_no_input_given(trained_bundle, tmp_path):
    # a missing setting (exit status 2), naming it
    for error in (user_error(SettingError, "no input given", infer, trained_bundle, None, tmp_path),
                  user_error(SettingError, "no input given", find_input_files, [])):
        assert str(error).startswith("input must be ") and error.exit_code == 2


def test_outputs_never_overwrite_inputs(trained_bundle, tmp_path):
    save_png(tmp_path / "a.png", odd_grey())
    victim = save_png(tmp_path / "a_recon.png", odd_grey(seed=2))
    before = victim.read_bytes()
    # with separate_folder, a.png's reconstruction is <output_dir>/a/a_recon.png: give that path as an input too
    nested = tmp_path / "out" / "a"
    nested.mkdir(parents=True)
    nested_victim = save_png(nested / "a_recon.png", odd_grey(seed=3))
    for overwrite in (False, True):
        user_error(OutputPathError, f"would overwrite the input file '{nested_victim}'", infer, trained_bundle,
                   [str(tmp_path / "a.png"), str(nested_victim)], tmp_path / "out", overwrite=overwrite,
                   separate_folder=True)
    # writing into the input folder is refused outright: its outputs would be the next run's inputs
    user_error(OutputPathError, f"output_dir '{tmp_path}' holds input files", infer, trained_bundle, str(tmp_path),
               tmp_path, overwrite=True)
    assert victim.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_recon.png", "out"]


def test_inputs_with_the_same_name_are_refused(trained_bundle, tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        save_png(tmp_path / folder / "slice.png", odd_grey())
    user_error(OutputPathError, "would both write", infer, trained_bundle, str(tmp_path / "*" / "slice.png"),
               tmp_path / "out")


def test_a_non_image_file_does_not_block_its_namesake(trained_bundle, tmp_path):
    save_png(tmp_path / "scan.png", odd_grey())
    (tmp_path / "scan.txt").write_text("notes on the scan")
    rows = {Path(row["input"]).name: row for row in infer(trained_bundle, str(tmp_path / "scan.*"), tmp_path / "out",
                                                           allow_skipped=True)}
    assert rows["scan.png"]["error"] == "" and "not a supported image file" in rows["scan.txt"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["reconstruction_metrics.csv", "scan_codes.npz",
                                                                   "scan_recon.png"]


def test_temporary_files_a_killed_run_left_are_removed_and_nothing_else(trained_bundle, input_dir, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    # what atomic writes leave when killed while writing this run's outputs
    debris = [".grey_recon.oboqjrg3.png", ".grey_codes.a1b2c3d4.npz", ".reconstruction_metrics.zz9_yy8x.csv"]
    others = [".grey_recon.png.swp", "notes.oboqjrg3.png", ".mine.a1b2c3d4.txt", ".grey_recon.short.png"]
    for name in debris + others:
        (output_dir / name).write_bytes(b"x")
    infer(trained_bundle, str(input_dir / "grey.png"), output_dir)
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(
        others + ["grey_recon.png", "grey_codes.npz", METRICS_FILE])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be created")
def test_an_output_dir_that_cannot_be_created_is_refused_before_the_checkpoint_is_read(trained_bundle, input_dir,
                                                                                      tmp_path):
    # os.access says /proc is writable to root; creating a folder there fails all the same
    user_error(OutputWriteError, "output_dir '/proc/vqbrain_out' cannot be created or written in its existing parent "
               "'/proc'", infer, trained_bundle, str(input_dir / "grey.png"), Path("/proc/vqbrain_out"),
               checkpoint=str(tmp_path / "no_such_checkpoint.pt"))


def test_symbolic_links_are_inputs_named_as_given(trained_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "elsewhere").mkdir()
    target = save_png(tmp_path / "in" / "b.png", odd_grey())
    save_png(tmp_path / "elsewhere" / "a.png", odd_grey(seed=2))
    (tmp_path / "in" / "link.png").symlink_to(target)
    (tmp_path / "in" / "other.png").symlink_to(tmp_path / "elsewhere" / "a.png")
    rows = infer(trained_bundle, str(tmp_path / "in"), tmp_path / "out")
    # one output per file given, named after the name given, even when two names lead to one file
    assert [row["input"] for row in rows] == [str(tmp_path / "in" / name) for name in ("b.png", "link.png", "other.png")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{stem}_{kind}" for stem in ("b", "link", "other") for kind in ("recon.png", "codes.npz")] + [METRICS_FILE])
    assert rows[2]["reconstruction"] == str(tmp_path / "out" / "other_recon.png")


def test_a_dangling_link_in_a_folder_is_a_bad_input_and_a_fifo_is_never_read(trained_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "good.png", odd_grey())
    dangling = tmp_path / "in" / "gone.nii.gz"
    dangling.symlink_to(tmp_path / "moved_away.nii.gz")
    os.mkfifo(tmp_path / "in" / "pipe.png")  # reading it would block the run for ever
    error = user_error(InputsSkippedError, "1 of 2 input file(s) were skipped", infer, trained_bundle,
                       str(tmp_path / "in"), tmp_path / "out")
    assert error.exit_code == 3
    rows = {Path(row.input).name: row for row in error.results}
    assert sorted(rows) == ["gone.nii.gz", "good.png"]
    assert rows["gone.nii.gz"].error == (f"input file '{dangling}' is a symbolic link to '{tmp_path / 'moved_away.nii.gz'}', "
                                         "which does not exist; expected a link to a PNG or NIfTI file")
    # a glob takes it too
    user_error(InputsSkippedError, "1 of 2 input file(s) were skipped", infer, trained_bundle,
               str(tmp_path / "in" / "g*"), tmp_path / "out_glob")


def test_an_output_that_is_a_link_to_an_input_is_refused(trained_bundle, tmp_path):
    source = save_png(tmp_path / "a.png", odd_grey())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_recon.png").symlink_to(source)
    user_error(OutputPathError, f"would overwrite the input file '{source}'", infer, trained_bundle, str(source),
               tmp_path / "out", overwrite=True)


def test_checkpoint_of_another_network_or_image_size(trained_bundle, input_dir, tmp_path):
    checkpoint = str(trained_bundle / "models" / "model.pt")
    png = str(input_dir / "grey.png")
    user_error(CheckpointError, f"'{checkpoint}' was saved from a different network", infer, trained_bundle, png,
               tmp_path / "a", **{"network_def#num_embeddings": 64})
    user_error(CheckpointError, f"'{checkpoint}' was trained with image_size=32", infer, trained_bundle, png,
               tmp_path / "b", image_size=64)


class _Payload:
    """Pickles to a call that creates ``marker``: what a malicious checkpoint could run when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_runs_no_code(trained_bundle, input_dir, tmp_path):
    # the payload is real: unrestricted unpickling runs it
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "metadata": {}}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": _Payload(marker)}))
    for name in ("evil.pt", "evil.pkl"):
        user_error(CheckpointError, str(tmp_path / name), infer, trained_bundle, str(input_dir / "grey.png"),
                   tmp_path / name.replace(".", "_"), checkpoint=str(tmp_path / name))
        assert not marker.exists()


def test_safetensors_checkpoint(trained_bundle, input_dir, tmp_path, vqvae):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in vqvae.state_dict().items()}, str(checkpoint), {"image_size": "32"})
    rows = infer(trained_bundle, str(input_dir / "grey.png"), tmp_path / "out", checkpoint=str(checkpoint))
    reference = infer(trained_bundle, str(input_dir / "grey.png"), tmp_path / "ref")
    assert rows[0]["ssim"] == reference[0]["ssim"]
    user_error(CheckpointError, "image_size=32", infer, trained_bundle, str(input_dir / "grey.png"),
               tmp_path / "other", checkpoint=str(checkpoint), image_size=64)


def test_the_inference_network_is_the_vqvae_and_loads_training_checkpoints(trained_bundle, vqvae):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(INFER)
    parser.update({"bundle_root": str(trained_bundle), **{k: v for k, v in TINY_OVERRIDES.items() if "#" in k}})
    network = parser.get_parsed_content("inference_network_def")
    assert network is parser.get_parsed_content("network_def"), "no adapter: the bundle's own network_def"
    network.load_state_dict(torch.load(trained_bundle / "models" / "model.pt", weights_only=True))  # strict
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(images), vqvae.reconstruct(images))


def test_skipped_inputs_end_the_run_with_an_error_after_writing_the_rest(trained_bundle, input_dir, tmp_path):
    inputs = [str(input_dir / "grey.png"), str(input_dir / "bad.png")]
    error = user_error(InputsSkippedError, "1 of 2 input file(s) were skipped", infer, trained_bundle, inputs, tmp_path)
    assert error.exit_code == 3 and [bool(r.error) for r in error.results] == [False, True]
    assert (tmp_path / "grey_recon.png").is_file() and "bad.png" in (tmp_path / METRICS_FILE).read_text()


def test_checkpoint_with_non_finite_weights_is_refused(trained_bundle, input_dir, tmp_path):
    checkpoint = torch.load(trained_bundle / "models" / "model.pt", weights_only=True)
    name = next(k for k, v in checkpoint.items() if v.is_floating_point() and "decoder" in k)
    checkpoint[name] = checkpoint[name].contiguous()
    checkpoint[name].view(-1)[0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    user_error(CheckpointError, f"'{tmp_path / 'nan.pt'}' holds non-finite (NaN or inf) weights", infer,
               trained_bundle, str(input_dir / "grey.png"), tmp_path / "out", checkpoint=str(tmp_path / "nan.pt"))
    assert not (tmp_path / "out").exists()


def test_non_finite_scores_are_left_empty_with_the_reason(trained_bundle, input_dir, tmp_path):
    from monai.bundle import create_workflow

    workflow = create_workflow(config_file=INFER, workflow_type="infer", bundle_root=str(trained_bundle),
                               input=str(input_dir / "grey.png"), output_dir=str(tmp_path), **TINY_OVERRIDES)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("inference_network")

    @torch.no_grad()
    def break_weights(engine):  # after the checkpoint is loaded, as a diverged training run could leave them
        next(p for n, p in network.named_parameters() if n.startswith("decoder")).fill_(float("nan"))

    workflow.parser.get_parsed_content("evaluator").add_event_handler(Events.STARTED, break_weights)
    workflow.run()
    row = next(csv.DictReader(open(tmp_path / METRICS_FILE)))
    assert row["ssim"] == "" and row["psnr"] == "" and "ssim is nan" in row["error"] and "not finite" in row["error"]
    with Image.open(row["reconstruction"]) as written:  # the non-finite pixels are written black
        assert np.asarray(written).max() == 0


def test_a_disk_failing_mid_run_still_leaves_the_metrics_of_what_was_written(trained_bundle, input_dir, tmp_path,
                                                                            monkeypatch):
    from monai_vqbrain.inference import transforms

    original = transforms.write_png

    def write(levels, path, *args, **kwargs):
        if Path(path).name == "rgb_recon.png":
            raise OutputWriteError(f"cannot write '{path}': No space left on device; free some space")
        original(levels, path, *args, **kwargs)

    monkeypatch.setattr(transforms, "write_png", write)
    inputs = [str(input_dir / "grey.png"), str(input_dir / "rgb.png")]
    user_error(OutputWriteError, "No space left on device", infer, trained_bundle, inputs, tmp_path, batch_size=1)
    rows = list(csv.DictReader(open(tmp_path / METRICS_FILE)))
    assert [Path(row["input"]).name for row in rows] == ["grey.png", "rgb.png"]
    assert rows[0]["error"] == "" and rows[0]["reconstruction"].endswith("grey_recon.png")
    assert rows[1]["reconstruction"] == "" and "not reconstructed: cannot write" in rows[1]["error"]


def test_a_narrower_output_dtype_warns_about_clipped_voxels(tmp_path, caplog):
    from monai_vqbrain.inference.io import write_nifti

    template = nib.Nifti1Image(np.zeros((4, 4, 2), dtype=np.int16), np.eye(4))
    volume = np.linspace(0.0, 600.0, 32).reshape(4, 4, 2)
    with caplog.at_level(logging.WARNING, logger="monai_vqbrain.inference.io"):
        write_nifti(volume, template, tmp_path / "wide.nii.gz")  # int16 holds it: silent
        assert not caplog.text
        write_nifti(volume, template, tmp_path / "narrow.nii.gz", output_dtype="uint8")
    written = np.asarray(nib.load(tmp_path / "narrow.nii.gz").dataobj)
    assert written.dtype == np.uint8 and written.max() == 255
    clipped = int(np.count_nonzero(np.rint(volume) > 255))
    assert f"{clipped} voxel value(s) outside uint8's range [0, 255] were clipped" in caplog.text


def test_inference_reads_volumes_at_model_size_with_the_same_outputs(tmp_path):
    from monai.transforms import Compose

    for path in volume_files(tmp_path)[:6]:
        if min(VolumeSlices(path).ras_shape) < 2:
            continue
        pipelines = []
        for image_size in (None, 32):
            load = LoadInputd("image", min_slice_size=1, image_size=image_size)
            pipelines.append(Compose([load, PadToSquared("image"), ResizeSquared("image", size=32)]))
        whole, by_slice = (pipeline({"image": str(path)}) for pipeline in pipelines)
        # resizing one slice or a stack of them sums in another order inside torch's kernels: a float32 ulp or two
        torch.testing.assert_close(by_slice["image"].as_tensor(), whole["image"].as_tensor(), rtol=0, atol=2e-7)
        restored = []
        for pipeline, data in zip(pipelines, (whole, by_slice), strict=True):
            # a reconstruction outside [0, 1] in places, so that the clipping order matters
            data["image"] = data["image"] * 1.3 - 0.1
            restored.append(pipeline.inverse(data)["image"].numpy())
        scale = float(np.ptp(restored[0])) or 1.0
        np.testing.assert_allclose(restored[1], restored[0], rtol=0, atol=1e-6 * scale)


def test_a_recursive_glob_follows_no_link_cycle(tmp_path, caplog):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(brain_like_slice(32, 0)).save(folder / name)
    # two links to '.': Python's glob would list 2^40 paths before the OS says the path is too deep
    os.symlink(".", folder / "loop1")
    os.symlink(".", folder / "sub" / "loop2")
    os.symlink("..", folder / "sub" / "up")
    os.symlink("c.png", folder / "sub" / "c.png")  # a link to itself: a bad input of its own, not a folder
    files = finishes(find_input_files, str(folder / "**" / "*.png"))
    assert [p.relative_to(folder).as_posix() for p in files] == ["a.png", "sub/b.png", "sub/c.png"]
    assert sum("symbolic link back to" in r.message for r in caplog.records) == 3
    with pytest.raises(ImageFileError, match="'.*c.png' is a loop of symbolic links"):
        read_input(files[-1])
    assert finishes(find_input_files, str(folder / "**")) == files


def test_a_bad_affine_is_skipped_in_inference_and_the_others_are_reconstructed(trained_bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_with_affine(inputs / "a_nan.nii.gz", BAD_AFFINES["nan"])
    save_with_affine(inputs / "b_singular.nii.gz", BAD_AFFINES["singular"])
    nib.save(nib.Nifti1Image(brain_like_volume((24, 28, 20), 2), NIFTI_AFFINE), str(inputs / "c_good.nii.gz"))
    error = user_error(InputsSkippedError, "2 of 3 input file(s) were skipped", infer, trained_bundle, str(inputs),
                       tmp_path / "out")
    assert error.exit_code == 3
    assert (tmp_path / "out" / "c_good_recon.nii.gz").is_file()
    table = (tmp_path / "out" / METRICS_FILE).read_text()
    assert "a_nan.nii.gz" in table and "NaN or infinite" in table and "no clear axis directions" in table


def test_a_thin_png_is_skipped_in_inference_not_the_run(trained_bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    grey_png(inputs / "a_thin.png", 16, 9000)
    Image.fromarray(brain_like_slice(40, 1)).save(inputs / "b_good.png")
    Image.fromarray(np.full((1, 1), 9, np.uint8)).save(inputs / "c_dot.png")
    user_error(InputsSkippedError, "2 of 3 input file(s) were skipped", infer, trained_bundle, str(inputs),
               tmp_path / "out")
    assert (tmp_path / "out" / "b_good_recon.png").is_file()
    table = (tmp_path / "out" / METRICS_FILE).read_text()
    assert "padded to a square of 9000x9000" in table and "gives slices of 1x1 pixels" in table
