"""The inferring bundle workflow on the user's PNG and NIfTI files: what a run writes (reconstructions in the
input's format, codes, the metrics table) and the exact round trip of preprocessing and restoring."""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    INFER,
    NIFTI_AFFINE,
    PERMUTED_AFFINE,
    TINY_OVERRIDES,
    VOLUME,
    brain_like_volume,
    infer,
    odd_grey,
    save_nifti,
    save_png,
    user_error,
    without_direction,
)
from nifti_oracle import load_nifti_slices
from PIL import Image

from monai_vqbrain.data import get_slice_transforms
from monai_vqbrain.engines import autocast, resolve_amp
from monai_vqbrain.errors import (
    ImageFileError,
    SettingError,
)
from monai_vqbrain.inference import (
    METRICS_FILE,
    LoadInputd,
    OutputPathError,
    SaveReconstructiond,
    read_input,
)

LATENT = 32 // 4  # two downsamplings


def parsed(key: str, **overrides):
    """The object ``key`` of the inference config, with the tiny settings (and ``overrides``) applied."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(INFER)
    parser.update({**TINY_OVERRIDES, **overrides})
    return parser.get_parsed_content(key)


def preprocess(path: Path, slice_axis: int = 2) -> dict:
    """The inference config's ``preprocessing`` applied to ``path`` (with the Compose, for its inverse)."""
    transforms = parsed("preprocessing", slice_axis=slice_axis)
    return {"transforms": transforms, **transforms({"image": path})}


def restore(item: dict, reconstruction: torch.Tensor) -> np.ndarray:
    """Undo the preprocessing of ``item`` on ``reconstruction`` ``(N, S, S)``, as the postprocessing's Invertd does."""
    from monai.data import MetaTensor

    recorded = MetaTensor(reconstruction, meta=item["image"].meta, applied_operations=item["image"].applied_operations)
    return np.asarray(item["transforms"].inverse({"image": recorded})["image"])


def save_round_trip(path: Path, slice_axis: int = 2) -> Path:
    """``path``'s own slices restored by ``LoadInputd``'s inverse and written beside it by ``SaveReconstructiond``."""
    load = LoadInputd("image", slice_axis=slice_axis)
    restored = load.inverse(load({"image": path}))
    return Path(SaveReconstructiond("image", output_dir=path.parent)(restored)["image"].meta["saved_to"])


def assert_same_header(output: nib.Nifti1Image, source: nib.Nifti1Image) -> None:
    for key in source.header.keys():
        assert np.asarray(output.header[key]).tobytes() == np.asarray(source.header[key]).tobytes(), key


GOOD = ("grey.png", "rgb.png", "rgba.png", "grey16.png", "slice2d.nii", "volume.nii.gz", "permuted.nii.gz")


BAD = ("bad.png", "bad_nan.nii.gz")


@pytest.fixture(scope="module")
def inferred(trained_bundle, input_dir, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    output_dir = tmp_path_factory.mktemp("inferred") / "out"
    rows = infer(trained_bundle, str(input_dir), output_dir, allow_skipped=True)
    return output_dir, {Path(row["input"]).name: row for row in rows}


def test_every_input_is_reported_and_good_ones_have_outputs(inferred, input_dir):
    output_dir, rows = inferred
    assert set(rows) == set(GOOD) | set(BAD), "notes.txt is not an image and not taken from a folder"
    for name in GOOD:
        row = rows[name]
        assert row["error"] == "", row
        stem = name.split(".")[0]
        suffix = ".png" if name.endswith(".png") else ".nii.gz"
        assert Path(row["reconstruction"]) == output_dir / f"{stem}_recon{suffix}"
        assert Path(row["codes"]) == output_dir / f"{stem}_codes.npz"
        assert -1.0 <= float(row["ssim"]) <= 1.0 and math.isfinite(float(row["psnr"]))
        assert len(row["ssim"].partition(".")[2]) <= 4, "SSIM with the 4 decimals of the evaluation report and log"
        slices = int(row["slices"])
        # axial slices of the RAS volume: the permuted volume's superior axis is its second voxel axis
        assert slices == {"volume.nii.gz": VOLUME[2], "permuted.nii.gz": VOLUME[1]}.get(name, 1)
        # fixed length: one code of log2(32) = 5 bits per latent pixel
        assert float(row["code_bits_fixed"]) == pytest.approx(slices * LATENT * LATENT * 5)
        # information content: the entropy of the file's own code frequencies, from the saved code map
        codes = np.load(row["codes"])["codes"].astype(np.int64).ravel()
        frequencies = np.bincount(codes) / codes.size
        frequencies = frequencies[frequencies > 0]
        entropy_bits = -codes.size * float((frequencies * np.log2(frequencies)).sum())
        assert float(row["code_bits"]) == pytest.approx(entropy_bits, abs=1e-2)
        assert 0 <= float(row["code_bits"]) < float(row["code_bits_fixed"])
        assert int(row["codes_bytes"]) == Path(row["codes"]).stat().st_size
        assert int(row["input_bytes"]) == (input_dir / name).stat().st_size
    assert rows["grey.png"]["shape"] == "37x53" and rows["volume.nii.gz"]["shape"] == "24x28x20"
    for name in BAD:
        assert rows[name]["reconstruction"] == "" and name in rows[name]["error"]
    assert "NaN" in rows["bad_nan.nii.gz"]["error"]
    assert sorted(p.name for p in output_dir.iterdir() if "bad" in p.name) == []


def test_png_reconstructions_keep_size_and_bit_depth(inferred):
    output_dir, _ = inferred
    for name, mode, size in (("grey", "L", (53, 37)), ("rgb", "L", (53, 37)), ("rgba", "L", (37, 53)),
                             ("grey16", "I;16", (33, 40))):
        with Image.open(output_dir / f"{name}_recon.png") as image:
            assert (image.mode, image.size) == (mode, size), name
    with Image.open(output_dir / "grey16_recon.png") as image:
        assert np.asarray(image).max() > 255, "16-bit input is written back on the 16-bit scale"


@pytest.mark.parametrize("name", ["volume.nii.gz", "permuted.nii.gz", "slice2d.nii"])
def test_nifti_reconstructions_overlay_the_input(inferred, input_dir, name):
    output_dir, _ = inferred
    source = nib.load(str(input_dir / name))
    output = nib.load(str(output_dir / (name.split(".")[0] + "_recon.nii.gz")))
    assert output.shape == source.shape
    assert output.get_data_dtype() == source.get_data_dtype()
    np.testing.assert_allclose(output.affine, source.affine)
    assert_same_header(output, source)
    data, original = output.get_fdata(), source.get_fdata()
    assert original.min() - 1e-3 <= data.min() and data.max() <= original.max() + 1e-3


def test_codes_decode_to_the_reconstruction(inferred, input_dir, vqvae):
    output_dir, _ = inferred
    with np.load(output_dir / "grey_codes.npz") as saved:
        codes = saved["codes"]
        assert codes.dtype == np.uint16 and codes.shape == (1, LATENT, LATENT)
        assert int(saved["num_embeddings"]) == 32 and int(saved["image_size"]) == 32
    with torch.no_grad():
        decoded = vqvae.decode_samples(torch.from_numpy(codes.astype(np.int64))).clamp(0, 1)
    expected = np.rint(restore(preprocess(input_dir / "grey.png"), decoded[:, 0]))
    with Image.open(output_dir / "grey_recon.png") as image:
        np.testing.assert_allclose(np.asarray(image), expected, atol=1)
    with np.load(output_dir / "volume_codes.npz") as saved:
        assert saved["codes"].shape == (VOLUME[2], LATENT, LATENT) and int(saved["slice_axis"]) == 2


@pytest.mark.parametrize("name", ["grey.png", "grey16.png", "rgb.png", "volume.nii.gz", "permuted.nii.gz", "slice2d.nii"])
def test_outputs_are_the_decoded_codes_restored_to_the_input(inferred, input_dir, vqvae, name, tmp_path):
    """What the workflow writes equals the VQ-VAE run by hand on the preprocessed input, restored and saved."""
    output_dir, _ = inferred
    item = preprocess(input_dir / name)
    cpu = torch.device("cpu")
    # as the workflow runs it: batch_size slices a call, at the precision amp=auto gives this machine
    with torch.no_grad(), autocast(cpu, resolve_amp("auto", cpu)):
        slices = item["image"].as_tensor()[:, None].split(TINY_OVERRIDES["batch_size"])
        codes = torch.cat([vqvae.index_quantize(chunk) for chunk in slices])
        decoded = torch.cat([vqvae.decode_samples(chunk).float() for chunk in codes.split(len(slices[0]))])
    decoded = decoded.clamp(0, 1)[:, 0]
    stem = name.split(".")[0]
    with np.load(output_dir / f"{stem}_codes.npz") as saved:
        np.testing.assert_array_equal(saved["codes"], codes.numpy())
    restored = restore(item, decoded)
    if name.endswith(".png"):
        with Image.open(output_dir / f"{stem}_recon.png") as written:
            written = np.asarray(written)
        np.testing.assert_allclose(written, np.clip(np.rint(restored), 0, np.iinfo(written.dtype).max), atol=1)
    else:
        source = nib.load(str(input_dir / name))
        written = nib.load(str(output_dir / f"{stem}_recon.nii.gz"))
        assert_same_header(written, source)
        # integer data are rounded to the input's type; float data keep their values
        tolerance = 1.0 if np.issubdtype(source.get_data_dtype(), np.integer) else 1e-3 * np.ptp(source.get_fdata())
        np.testing.assert_allclose(written.get_fdata(), restored, atol=tolerance)


def test_the_workflow_is_a_monai_evaluator_with_the_declared_pieces(trained_bundle, input_dir, tmp_path):
    from monai.bundle import create_workflow
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Invertd

    from monai_vqbrain.handlers import InterruptHandler
    from monai_vqbrain.inference import CodesSaver, InferenceMetricsWriter, LoadInputd, SaveReconstructiond

    workflow = create_workflow(config_file=INFER, workflow_type="infer", bundle_root=str(trained_bundle),
                               input=str(input_dir / "grey.png"), output_dir=str(tmp_path), **TINY_OVERRIDES)
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, SupervisedEvaluator) and workflow.evaluator.inferer is workflow.inferer
    assert workflow.dataset.transform is workflow.preprocessing
    assert isinstance(workflow.preprocessing.transforms[0], LoadInputd)
    assert [type(t) for t in workflow.postprocessing.transforms] == [Invertd, SaveReconstructiond]
    assert [type(h) for h in workflow.handlers] == [CodesSaver, InferenceMetricsWriter, InterruptHandler]
    parser = workflow.parser
    parser["save_codes"] = False
    assert [type(h) for h in parser.get_parsed_content("handlers", lazy=False)] == [InferenceMetricsWriter, InterruptHandler]


def test_saveimage_keys_name_and_type_the_outputs(trained_bundle, input_dir, tmp_path):
    inputs = [str(input_dir / "grey.png"), str(input_dir / "volume.nii.gz")]
    infer(trained_bundle, inputs, tmp_path / "ref")
    rows = infer(trained_bundle, [inputs[1]], tmp_path / "out", output_postfix="rec", output_ext=".nii",
                 output_dtype="float32", separate_folder=True)
    written = tmp_path / "out" / "volume" / "volume_rec.nii"
    assert Path(rows[0]["reconstruction"]) == written and Path(rows[0]["codes"]) == written.with_name("volume_codes.npz")
    image, reference = nib.load(str(written)), nib.load(str(tmp_path / "ref" / "volume_recon.nii.gz"))
    assert image.get_data_dtype() == np.float32 and reference.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.affine, reference.affine)
    np.testing.assert_allclose(np.rint(image.get_fdata()), reference.get_fdata(), atol=1)
    infer(trained_bundle, [inputs[0]], tmp_path / "png16", output_dtype="uint16", save_codes=False)
    with Image.open(tmp_path / "png16" / "grey_recon.png") as wide, Image.open(tmp_path / "ref" / "grey_recon.png") as narrow:
        assert wide.mode == "I;16" and narrow.mode == "L"
        np.testing.assert_allclose(np.asarray(wide) / 65535, np.asarray(narrow) / 255, atol=1 / 255)
    assert sorted(p.name for p in (tmp_path / "png16").iterdir()) == ["grey_recon.png", METRICS_FILE]
    # like output_dtype, an output_ext that cannot hold an input's format is a setting error (exit status 2)
    user_error(SettingError, f"output_ext '.png' cannot hold '{inputs[1]}'; expected null (the input's format) or "
               "one of .nii.gz, .nii", infer, trained_bundle, inputs, tmp_path / "bad", output_ext=".png")
    user_error(SettingError, f"output_ext '.nii' cannot hold '{inputs[0]}'", infer, trained_bundle, [inputs[0]],
               tmp_path / "bad_png", output_ext=".nii")
    user_error(SettingError, "output_dtype 'float32' cannot be written as PNG", infer, trained_bundle, inputs,
               tmp_path / "bad_dtype", output_dtype="float32")
    user_error(SettingError, "output_ext must be one of", infer, trained_bundle, inputs, tmp_path / "bad_ext",
               output_ext="tif")


def test_overwrite_removes_the_earlier_outputs_of_an_input_now_skipped(trained_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", odd_grey())
    save_png(tmp_path / "in" / "b.png", odd_grey(seed=2))
    output_dir = tmp_path / "out"
    infer(trained_bundle, str(tmp_path / "in"), output_dir)
    (output_dir / "b_recon.nii.gz").write_bytes(b"not written by this run's settings: kept")
    (tmp_path / "in" / "b.png").write_bytes(b"damaged since")
    # without --overwrite nothing is removed: the run is refused
    user_error(OutputPathError, "already exists", infer, trained_bundle, str(tmp_path / "in"), output_dir)
    assert (output_dir / "b_recon.png").is_file() and (output_dir / "b_codes.npz").is_file()
    rows = infer(trained_bundle, str(tmp_path / "in"), output_dir, overwrite=True, allow_skipped=True)
    assert rows[1]["reconstruction"] == "" and "b.png" in rows[1]["error"]
    assert sorted(p.name for p in output_dir.iterdir()) == ["a_codes.npz", "a_recon.png", "b_recon.nii.gz",
                                                           METRICS_FILE]


def test_existing_outputs_are_not_overwritten_unless_asked(inferred, trained_bundle, input_dir, tmp_path):
    output_dir = shutil.copytree(inferred[0], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in output_dir.iterdir()}
    user_error(OutputPathError, "already exists", infer, trained_bundle, str(input_dir), output_dir)
    assert {p.name: p.read_bytes() for p in output_dir.iterdir()} == before
    rows = infer(trained_bundle, str(input_dir / "grey.png"), output_dir, overwrite=True, save_codes=False)
    assert len(rows) == 1 and rows[0]["codes"] == "" and rows[0]["error"] == ""


def test_strict_stops_at_the_first_bad_file(trained_bundle, input_dir, tmp_path):
    user_error(ImageFileError, str(input_dir / "bad.png"), infer, trained_bundle, str(input_dir), tmp_path, strict=True)


def test_a_strict_run_stopped_after_writing_files_leaves_their_table(trained_bundle, input_dir, tmp_path):
    inputs = [str(input_dir / name) for name in ("grey.png", "bad.png", "rgb.png")]
    error = user_error(ImageFileError, inputs[1], infer, trained_bundle, inputs, tmp_path, strict=True)
    rows = list(csv.DictReader(open(tmp_path / METRICS_FILE)))
    assert [row["input"] for row in rows] == inputs
    assert rows[0]["error"] == "" and rows[0]["reconstruction"] == str(tmp_path / "grey_recon.png")
    assert rows[1]["reconstruction"] == "" and rows[1]["error"] == str(error) and rows[1]["format"] == "png"
    assert rows[2]["reconstruction"] == "" and rows[2]["error"] == "not reconstructed: stopped by --strict"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey_codes.npz", "grey_recon.png", METRICS_FILE]


def test_a_bad_file_ending_a_strict_run_is_reported_once(trained_bundle, input_dir, tmp_path):
    import logging

    class Records(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append((record.levelname, record.getMessage()))

    messages: list[tuple[str, str]] = []
    evaluator_log = logging.getLogger("ignite.engine.engine.ReconstructionEvaluator")
    handler, level = Records(), evaluator_log.level
    evaluator_log.addHandler(handler)
    evaluator_log.setLevel(logging.DEBUG)
    try:
        user_error(ImageFileError, "bad.png", infer, trained_bundle, str(input_dir), tmp_path, strict=True)
    finally:
        evaluator_log.removeHandler(handler)
        evaluator_log.setLevel(level)
    assert any(level == "DEBUG" for level, _ in messages), "the evaluator's log is captured"
    # the error hook prints it; Ignite's own "terminating due to exception" lines would repeat it
    assert [message for level, message in messages if level == "ERROR"] == []
    # a fresh run is no resumption: Ignite's "Engine run resuming from iteration 0, epoch 0" would say so
    assert not [message for _, message in messages if "resuming from iteration" in message]


def test_command_line_inference_on_a_glob(trained_bundle, input_dir, tmp_path):
    overrides = [f"--{key}={value}" for key, value in TINY_OVERRIDES.items()]
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(INFER),
               "--bundle_root", str(trained_bundle), "--input", str(input_dir / "*.nii*"),
               "--output_dir", str(tmp_path / "out"), *overrides]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MONAI_VQBRAIN_TRACEBACK": ""})
    # bad_nan.nii.gz is skipped: the run says so in its exit status and one line
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "error: 1 of 4 input file(s) were skipped (first: " in result.stderr
    produced = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert produced == sorted(["permuted_codes.npz", "permuted_recon.nii.gz", "slice2d_codes.npz",
                               "slice2d_recon.nii.gz", "volume_codes.npz", "volume_recon.nii.gz", METRICS_FILE])
    assert "bad_nan.nii.gz" in (tmp_path / "out" / METRICS_FILE).read_text()


def test_png_model_input_is_the_training_input(tmp_path):
    for name, array in (("grey.png", odd_grey()), ("rgb.png", np.stack([odd_grey()] * 3, -1) // [1, 2, 3])):
        path = save_png(tmp_path / name, array.astype(np.uint8))
        expected = get_slice_transforms(32)({"image": str(path)})["image"]
        model_input = preprocess(path)["image"]
        np.testing.assert_allclose(model_input.numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_nifti_slices_are_the_training_slices(tmp_path, slice_axis):
    path = save_nifti(tmp_path / "v.nii.gz", brain_like_volume(VOLUME, seed=2), PERMUTED_AFFINE)
    slices, _, info = read_input(path, slice_axis=slice_axis)
    expected = load_nifti_slices([path], slice_axis=slice_axis, slice_range=(0.0, 1.0), min_foreground=0.0)
    assert info["format"] == "nifti" and slices.shape[0] == len(expected)
    np.testing.assert_allclose(slices, np.stack([item["image"][0] for item in expected]), atol=1e-6)


def test_png_padding_and_resizing_are_undone_exactly(tmp_path):
    # 32x20 pads to 32x32 = image_size: no resizing, so restoring must give back every pixel
    source = save_png(tmp_path / "narrow.png", odd_grey(32, 20))
    assert read_input(source)[2]["format"] == "png"
    item = preprocess(source)
    restored = restore(item, item["image"].as_tensor())
    np.testing.assert_array_equal(np.rint(restored), np.asarray(Image.open(source)))
    assert save_round_trip(source) == tmp_path / "narrow_recon.png"
    with Image.open(source) as original, Image.open(tmp_path / "narrow_recon.png") as written:
        np.testing.assert_array_equal(np.asarray(written), np.asarray(original))


@pytest.mark.parametrize("affine", [NIFTI_AFFINE, PERMUTED_AFFINE], ids=["flipped", "permuted"])
@pytest.mark.parametrize("slice_axis", [0, 2])
def test_nifti_intensities_and_voxel_order_are_restored(tmp_path, affine, slice_axis):
    data = brain_like_volume(VOLUME, seed=3)
    data[0, 0, 0] = 5000  # a hot voxel above the 99.5th percentile: clipped by the scaling, not restorable
    source = save_nifti(tmp_path / "v.nii.gz", data, affine)
    info = read_input(source, slice_axis=slice_axis)[2]
    assert save_round_trip(source, slice_axis) == tmp_path / "v_recon.nii.gz"
    output = nib.load(str(tmp_path / "v_recon.nii.gz"))
    assert output.get_data_dtype() == np.int16
    assert_same_header(output, nib.load(str(source)))
    restored = np.asarray(output.dataobj)
    assert np.abs(restored - np.clip(data, info["low"], info["high"])).max() <= 0.5 + 1e-6
    assert restored[0, 0, 0] == round(info["high"]) < 5000


def test_singleton_axis_makes_one_slice(tmp_path):
    path = save_nifti(tmp_path / "thin.nii.gz", brain_like_volume((24, 1, 20), seed=1))
    assert read_input(path, slice_axis=2)[0].shape == (1, 20, 24)
    save_round_trip(path, slice_axis=2)
    assert nib.load(str(tmp_path / "thin_recon.nii.gz")).shape == (24, 1, 20)


@pytest.mark.parametrize("shape", [(24, 28), (24, 28, 1)])
def test_slice_without_a_slice_direction(tmp_path, shape):
    path = without_direction("slice.nii.gz", shape)(tmp_path)
    slices, _, info = read_input(path)
    assert slices.shape == (1, 28, 24)
    save_round_trip(path)
    output, source = nib.load(str(tmp_path / "slice_recon.nii.gz")), nib.load(str(path))
    assert output.shape == shape
    assert np.abs(output.get_fdata() - np.clip(source.get_fdata(), info["low"], info["high"])).max() <= 0.5 + 1e-6
