"""The inferring bundle workflow on the user's PNG and NIfTI files: round trips, metrics, codes and bad input."""

from __future__ import annotations

import csv
import logging
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    NIFTI_AFFINE,
    TINY_NETWORK,
    TINY_OVERRIDES,
    TRAIN,
    brain_like_slice,
    brain_like_volume,
    run_bundle,
    user_error,
)
from ignite.engine import Events
from nifti_oracle import load_nifti_slices
from PIL import Image

from monai_vqbrain.data import get_slice_transforms
from monai_vqbrain.engines import autocast, resolve_amp
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
    ReconstructionNetwork,
    SaveReconstructiond,
    find_input_files,
    read_input,
)
from monai_vqbrain.networks import VQVAE
from monai_vqbrain.utils import load_network_weights

INFER = [TRAIN, str(CONFIGS / "inference.json")]

NETWORK = TINY_NETWORK
LATENT = 32 // 4  # two downsamplings
VOLUME = (24, 28, 20)
# a permutation and flips of the axes, so that the RAS reorientation is not a no-op
PERMUTED_AFFINE = np.array([[0.0, 0.0, -1.2, 10.0], [-1.0, 0.0, 0.0, 5.0], [0.0, 1.1, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]])




def infer(bundle_root: Path, inputs, output_dir: Path, **overrides) -> list[dict]:
    """Run the inferring workflow and return the rows of its metrics CSV."""
    run_bundle("inferring", INFER, bundle_root=str(bundle_root), input=inputs, output_dir=str(output_dir), **overrides)
    with open(output_dir / METRICS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


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




def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = NIFTI_AFFINE) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"monai_vqbrain test volume"
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_sform(affine, code=2)
    nib.save(image, str(path))
    return path


def odd_grey(height: int = 37, width: int = 53, seed: int = 1) -> np.ndarray:
    """An 8-bit grey slice of an odd, non-square size."""
    side = max(height, width)
    return brain_like_slice(side, seed)[:height, :width].copy()


def assert_same_header(output: nib.Nifti1Image, source: nib.Nifti1Image) -> None:
    for key in source.header.keys():
        assert np.asarray(output.header[key]).tobytes() == np.asarray(source.header[key]).tobytes(), key


@pytest.fixture(scope="module")
def vqvae(trained_bundle) -> VQVAE:
    network = VQVAE(**NETWORK).eval()
    load_network_weights(network, trained_bundle / "models" / "model.pt", {"image_size": 32})
    return network


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    """Good inputs of every kind, plus a corrupt PNG and a volume holding NaNs (bad files sort first)."""
    root = tmp_path_factory.mktemp("inputs")
    grey = odd_grey()
    save_png(root / "grey.png", grey)
    save_png(root / "rgb.png", np.stack([grey, grey // 2, np.minimum(grey.astype(int) + 30, 255)], -1).astype(np.uint8))
    save_png(root / "rgba.png", np.stack([grey.T, grey.T, grey.T, np.full_like(grey.T, 200)], -1))
    save_png(root / "grey16.png", (odd_grey(40, 33).astype(np.uint16) * 250))
    save_nifti(root / "slice2d.nii", brain_like_volume(VOLUME[:2], seed=4).astype(np.float32) / 7.0)
    save_nifti(root / "volume.nii.gz", brain_like_volume(VOLUME, seed=5))
    save_nifti(root / "permuted.nii.gz", brain_like_volume(VOLUME, seed=6).astype(np.uint8), PERMUTED_AFFINE)
    (root / "bad.png").write_bytes(b"this is not a png")
    nan_volume = brain_like_volume(VOLUME, seed=7).astype(np.float32)
    nan_volume[3, 4, 5] = np.nan
    save_nifti(root / "bad_nan.nii.gz", nan_volume)
    (root / "notes.txt").write_text("a folder input takes only PNG and NIfTI files")
    return root


GOOD = ("grey.png", "rgb.png", "rgba.png", "grey16.png", "slice2d.nii", "volume.nii.gz", "permuted.nii.gz")
BAD = ("bad.png", "bad_nan.nii.gz")


@pytest.fixture(scope="module")
def inferred(trained_bundle, input_dir, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    output_dir = tmp_path_factory.mktemp("inferred") / "out"
    rows = infer(trained_bundle, str(input_dir), output_dir, allow_skipped=True)
    return output_dir, {Path(row["input"]).name: row for row in rows}


# ----------------------------------------------------------------------------------------------------------------
# outputs of a run


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

    from monai_vqbrain.inference import CodesSaver, InferenceMetricsWriter, LoadInputd, SaveReconstructiond

    workflow = create_workflow(config_file=INFER, workflow_type="infer", bundle_root=str(trained_bundle),
                               input=str(input_dir / "grey.png"), output_dir=str(tmp_path), **TINY_OVERRIDES)
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, SupervisedEvaluator) and workflow.evaluator.inferer is workflow.inferer
    assert workflow.dataset.transform is workflow.preprocessing
    assert isinstance(workflow.preprocessing.transforms[0], LoadInputd)
    assert [type(t) for t in workflow.postprocessing.transforms] == [Invertd, SaveReconstructiond]
    assert [type(h) for h in workflow.handlers] == [CodesSaver, InferenceMetricsWriter]
    parser = workflow.parser
    parser["save_codes"] = False
    assert [type(h) for h in parser.get_parsed_content("handlers", lazy=False)] == [InferenceMetricsWriter]


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
    handler = Records()
    evaluator_log.addHandler(handler)
    try:
        user_error(ImageFileError, "bad.png", infer, trained_bundle, str(input_dir), tmp_path, strict=True)
    finally:
        evaluator_log.removeHandler(handler)
    # the error hook prints it; Ignite's own "terminating due to exception" lines would repeat it
    assert any("Engine run resuming" in message for _, message in messages), "the evaluator's log is captured"
    assert [message for level, message in messages if level == "ERROR"] == []


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


# ----------------------------------------------------------------------------------------------------------------
# preprocessing and restoring, without a network


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
    path = _without_direction("slice.nii.gz", shape)(tmp_path)
    slices, _, info = read_input(path)
    assert slices.shape == (1, 28, 24)
    save_round_trip(path)
    output, source = nib.load(str(tmp_path / "slice_recon.nii.gz")), nib.load(str(path))
    assert output.shape == shape
    assert np.abs(output.get_fdata() - np.clip(source.get_fdata(), info["low"], info["high"])).max() <= 0.5 + 1e-6


# ----------------------------------------------------------------------------------------------------------------
# bad input files


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


def _without_direction(name: str, shape: tuple[int, ...]):
    """A NIfTI whose affine gives its third voxel axis no direction (zero slice thickness)."""

    def make(folder: Path) -> Path:
        image = nib.Nifti1Image(brain_like_volume(shape, seed=1), None)
        image.header.set_sform(np.diag([1.0, -1.0, 0.0, 1.0]), code=1)
        image.header.set_qform(None, code=0)
        nib.save(image, str(folder / name))
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
    "no axis directions": (_without_direction("flat.nii.gz", VOLUME), "expected a valid voxel-to-world affine"),
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


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


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


def test_reconstruction_network_loads_training_checkpoints(trained_bundle, vqvae):
    network = ReconstructionNetwork(VQVAE(**NETWORK)).eval()
    state = torch.load(trained_bundle / "models" / "model.pt", weights_only=True)
    network.load_state_dict(state)
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(network(images), vqvae.reconstruct(images))
    network.load_state_dict(network.state_dict())  # its own, prefixed keys too


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
        next(p for n, p in network.named_parameters() if n.startswith("vqvae.decoder")).fill_(float("nan"))

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
