"""benchmarks/readme_figure.py: the README's overview figure from a trained bundle root, through the package's own
loaders and checks."""

from __future__ import annotations

import importlib.util
import io
import shutil

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO_ROOT, TINY_NETWORK, TRAIN, run_bundle
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_PRIOR = {"prior_def#channels": 8, "prior_def#num_layers": 2, "prior_def#kernel_size": 3, "prior_batch_size": 4,
              "prior_slice_bins": 4, "prior_max_epochs": 1}


def _script():
    spec = importlib.util.spec_from_file_location("readme_figure", REPO_ROOT / "benchmarks" / "readme_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prior_bundle(tmp_path_factory, trained_bundle, demo_root):
    """The tiny VQ-VAE's checkpoints plus a prior trained for one epoch over its codes."""
    root = tmp_path_factory.mktemp("figure_bundle")
    shutil.copytree(trained_bundle / "models", root / "models")
    run_bundle("training_prior", [TRAIN, str(CONFIGS / "train_prior.json")], bundle_root=str(root),
               dataset_dir=str(demo_root), **TINY_PRIOR)
    return root


def test_figure_shows_test_slices_reconstructions_and_samples(prior_bundle, demo_root, tmp_path, capsys):
    import json

    output = tmp_path / "images" / "overview.png"
    arguments = ["--bundle_root", str(prior_bundle), "--dataset_dir", str(demo_root), "--output", str(output),
                 "--network", json.dumps(TINY_NETWORK), "--columns", "2"]
    assert _script().main(arguments) == 0
    assert torch.is_grad_enabled(), "the script leaves the process as it found it"
    image = np.asarray(Image.open(output).convert("L"), dtype=float)
    assert image.shape[1] > image.shape[0] > 100, "two panels side by side"
    assert image.std() > 10, "slices drawn, not a blank canvas"

    # an existing figure is kept unless --overwrite; with it the figure is drawn again (and the same: seeded)
    before = output.read_bytes()
    assert _script().main(arguments) == 1
    assert capsys.readouterr().err.startswith("error:") and output.read_bytes() == before
    assert _script().main([*arguments, "--overwrite"]) == 0
    assert np.array_equal(np.asarray(Image.open(output)), np.asarray(Image.open(io.BytesIO(before))))

    # the generation section's picture: only the real-above-generated panel, half as wide
    generation = tmp_path / "generation.png"
    assert _script().main([*arguments[:5], str(generation), *arguments[6:], "--panels", "generation"]) == 0
    panel = np.asarray(Image.open(generation).convert("L"), dtype=float)
    assert panel.shape[0] == image.shape[0] and panel.shape[1] < 0.6 * image.shape[1] and panel.std() > 10


def test_figure_needs_a_trained_prior_and_the_run_s_network(trained_bundle, prior_bundle, demo_root, tmp_path,
                                                             capsys):
    import json

    output = tmp_path / "overview.png"
    arguments = ["--dataset_dir", str(demo_root), "--output", str(output)]
    tiny = ["--network", json.dumps(TINY_NETWORK)]
    # the tiny training run has no prior.pt: one line naming it and the run to do
    assert _script().main(["--bundle_root", str(trained_bundle), *arguments, *tiny]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "prior.pt" in err and "training_prior" in err
    # a damaged prior.pt is one line naming it
    shutil.copy2(trained_bundle / "models" / "model.pt", tmp_path / "model.pt")
    (tmp_path / "prior.pt").write_bytes(b"")
    assert _script().main(["--bundle_root", str(trained_bundle), "--ckpt_dir", str(tmp_path), *arguments, *tiny]) == 1
    assert "prior.pt" in capsys.readouterr().err
    # train.json's own network does not fit the tiny checkpoint: refused by the package's checkpoint check
    assert _script().main(["--bundle_root", str(prior_bundle), *arguments]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "model.pt" in err
    assert not output.exists()
