"""The bundle as MONAI's generic tools and the model-zoo conventions expect it: licence, metadata, standard ids."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from conftest import CONFIGS, REPO_ROOT, TINY_NETWORK, TINY_OVERRIDES, TRAIN, run_bundle, user_error

from monai_vqbrain.errors import CheckpointError, SettingError

META = CONFIGS / "metadata.json"
SCHEMA = CONFIGS / "schema" / "meta_schema_20240725.json"


def test_licence_ships_at_the_root_and_in_the_bundle():
    root = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in root and "Version 2.0, January 2004" in root
    assert "END OF TERMS AND CONDITIONS" in root, "the full licence text, not a pointer to it"
    assert (REPO_ROOT / "bundle" / "LICENSE").read_text() == root


def test_data_licence_names_the_oasis_terms_and_citation():
    text = (REPO_ROOT / "bundle" / "docs" / "data_license.txt").read_text()
    assert "oasis-brains.org" in text and "Data Use Agreement" in text
    assert "Journal of Cognitive Neuroscience, 19(9), 1498-1507" in text
    assert "No OASIS data ships with this bundle" in text and "synthetic" in text


def test_prior_data_format_matches_the_pixelcnn():
    from jsonschema.validators import validator_for
    from monai.bundle import ConfigParser

    metadata = json.loads(META.read_text())
    schema = json.loads(SCHEMA.read_text())
    io_schema = {**schema["$defs"]["network_io"], "$defs": schema["$defs"]}
    validator_for(schema)(io_schema).validate(metadata["prior_network_data_format"])

    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "train_prior.json")])
    prior = parser.get_parsed_content("prior_def").eval()
    fmt = metadata["prior_network_data_format"]
    inputs = {}
    for name, spec in fmt["inputs"].items():
        dtype = getattr(torch, spec["dtype"])
        shape = (2, *([spec["num_channels"]] if spec["num_channels"] else []), *spec["spatial_shape"])
        low, high = spec["value_range"]
        inputs[name] = (torch.randint(low, high + 1, shape) if not dtype.is_floating_point
                        else torch.rand(shape) * (high - low) + low).to(dtype)
    with torch.no_grad():
        logits = prior(**inputs)
    pred = fmt["outputs"]["pred"]
    assert tuple(logits.shape) == (2, pred["num_channels"], *pred["spatial_shape"])
    assert logits.dtype == getattr(torch, pred["dtype"])
    assert pred["num_channels"] == parser["network_def"]["num_embeddings"]
    assert fmt["inputs"]["codes"]["value_range"] == [0, pred["num_channels"] - 1]


def test_model_card_has_requirements_commands_and_citation():
    card = (REPO_ROOT / "bundle" / "docs" / "README.md").read_text()
    for heading in ("## System requirements", "## Citation", "## License"):
        assert heading in card, heading
    for command in ("run generating", "run training_prior", "torchrun", "multi_gpu_train.json"):
        assert command in card, command
    assert "data_license.txt" in card


# ---------------------------------------------------------------------------------------------------------------
# MONAI's standard ids, properties and bundle tools

EVALUATE = str(CONFIGS / "evaluate.json")
INFER = str(CONFIGS / "inference.json")
TRAIN_PRIOR = str(CONFIGS / "train_prior.json")
GENERATE = str(CONFIGS / "generate.json")
RUN_IDS = {TRAIN: "training", EVALUATE: "evaluating", INFER: "inferring", TRAIN_PRIOR: "training_prior",
           GENERATE: "generating"}


def test_every_config_answers_to_the_default_run_id():
    from monai.bundle import ConfigParser

    for config, documented in RUN_IDS.items():
        files = [TRAIN] if config == TRAIN else [TRAIN, config]
        parser = ConfigParser()
        parser.read_config(files)
        parser.resolve_macro_and_relative_ids()
        assert "initialize" in parser and "finalize" in parser, config
        # the default id runs the documented workflow, not training's (the configs are merged over train.json)
        same = [str(item).replace("::", "#") for item in parser["run"]]
        assert same == [str(item).replace("::", "#") for item in parser[documented]], config
        assert isinstance(parser[documented], list) and parser[documented], config


def test_default_run_id_trains_and_evaluates(trained_bundle, demo_root, tmp_path):
    import shutil

    bundle_root = tmp_path / "bundle"
    shutil.copytree(trained_bundle, bundle_root)
    outputs = tmp_path / "outputs"
    run_bundle("run", [TRAIN, EVALUATE], bundle_root=str(bundle_root), dataset_dir=str(demo_root),
               output_dir=str(outputs))
    assert json.loads((outputs / "metrics.json").read_text())["n"] > 0
    # `run` with train.json alone trains, and keeps refusing to replace checkpoints without --overwrite
    history = (bundle_root / "models" / "training_history.json").read_text()
    user_error(CheckpointError, "--overwrite", run_bundle, "run", TRAIN, bundle_root=str(bundle_root),
               dataset_dir=str(demo_root), max_epochs=1)
    assert (bundle_root / "models" / "training_history.json").read_text() == history
    run_bundle("run", TRAIN, bundle_root=str(bundle_root), dataset_dir=str(demo_root), max_epochs=1,
               overwrite=True)
    assert len(json.loads((bundle_root / "models" / "training_history.json").read_text())) == 1


def _tiny_workflow(config_file, workflow_type, **overrides):
    from monai.bundle import create_workflow

    return create_workflow(config_file=config_file, workflow_type=workflow_type,
                           **{**TINY_OVERRIDES, **overrides})


def test_train_workflow_has_every_required_property(trained_bundle, demo_root):
    from monai.engines import SupervisedTrainer

    # a bundle folder that already holds checkpoints: inspecting it must not be refused
    workflow = _tiny_workflow(TRAIN, "train", bundle_root=str(trained_bundle), dataset_dir=str(demo_root))
    assert workflow.check_properties() == []
    assert isinstance(workflow.trainer, SupervisedTrainer) and workflow.trainer.inferer is workflow.train_inferer
    assert workflow.max_epochs == TINY_OVERRIDES.get("max_epochs", 15)


def test_infer_workflow_has_every_required_property(trained_bundle, demo_root, tmp_path):
    inputs = sorted((demo_root / "keras_png_slices_test").glob("*.png"))[:2]
    workflow = _tiny_workflow([TRAIN, INFER], "infer", bundle_root=str(trained_bundle),
                              input=[str(p) for p in inputs], output_dir=str(tmp_path / "recon"))
    assert workflow.check_properties() == []
    assert [item["image"] for item in workflow.dataset.data] == [p.resolve() for p in inputs]
    workflow.run()
    assert sorted(p.name for p in (tmp_path / "recon").glob("*_recon.png")) == [
        p.name.replace(".png", "_recon.png") for p in inputs]


def test_infer_workflow_properties_without_an_input_and_its_run_refuses(trained_bundle, tmp_path):
    workflow = _tiny_workflow([TRAIN, INFER], "infer", bundle_root=str(trained_bundle),
                              output_dir=str(tmp_path / "recon"))
    assert workflow.check_properties() == []
    assert len(workflow.dataset) == 0
    user_error(SettingError, "(no input given); pass --input PATH", workflow.run)
    assert not (tmp_path / "recon").exists()


def test_verify_net_in_out_of_network_def():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=TRAIN, device="cpu")


def test_network_def_forward_is_the_reconstruction_and_training_still_sees_the_details():
    from monai.bundle import ConfigParser

    from monai_vqbrain.networks import VQVAE

    parser = ConfigParser()
    parser.read_config(TRAIN)
    for key, value in TINY_NETWORK.items():
        parser[f"network_def#{key}"] = value
    network = parser.get_parsed_content("network_def").eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(network(images), network.reconstruct(images)), "the plain forward is reconstruct"
        details = network(images, return_details=True)
        torch.testing.assert_close(details.reconstruction, network(images), rtol=1e-5, atol=1e-5)
        assert details.indices.shape == (2, 8, 8)
    # the network itself keeps MONAI VQVAE's tuple when built directly
    reconstruction, loss = VQVAE(**TINY_NETWORK).eval()(images)
    assert reconstruction.shape == images.shape and loss.ndim == 0


def _bundle_folder(trained_bundle, tmp_path) -> Path:
    """A bundle folder as ``monai.bundle.load`` expects it: ``<name>/configs`` and ``<name>/models/model.pt``."""
    import shutil

    folder = tmp_path / "vqbrain"
    shutil.copytree(CONFIGS, folder / "configs")
    (folder / "models").mkdir()
    shutil.copy(trained_bundle / "models" / "model.pt", folder / "models" / "model.pt")
    return folder


def test_monai_bundle_load_returns_the_trained_weights(trained_bundle, tmp_path, monkeypatch):
    from monai.bundle import load

    from monai_vqbrain.networks import VQVAE
    from monai_vqbrain.utils import load_network_weights

    folder = _bundle_folder(trained_bundle, tmp_path)
    monkeypatch.chdir(tmp_path)
    model = load(name=folder.name, bundle_dir=str(tmp_path), source="github", device="cpu",
                 net_override=TINY_NETWORK)
    expected = VQVAE(**TINY_NETWORK)
    load_network_weights(expected, folder / "models" / "model.pt")
    assert isinstance(model, VQVAE)
    loaded = model.state_dict()
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_best_model_file_is_a_state_dict_that_loads_strictly(trained_bundle):
    from monai_vqbrain.networks import VQVAE
    from monai_vqbrain.utils import file_sha256, metadata_file

    models = trained_bundle / "models"
    # as model-zoo bundles' model.pt: network_def.load_state_dict(torch.load(...)) with strict=True
    VQVAE(**TINY_NETWORK).load_state_dict(torch.load(models / "model.pt", weights_only=True))
    sidecar = json.loads(metadata_file(models / "model.pt").read_text())
    assert sidecar["weights_sha256"] == file_sha256(models / "model.pt")
    assert sidecar["metadata"]["image_size"] == 32 and sidecar["metadata"]["key_metric"] > 0


# ---------------------------------------------------------------------------------------------------------------
# ONNX export

ONNX_CONVERTER = {"dynamo": False, "input_names": ["image"], "output_names": ["pred"],
                  "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}}}
"""The README's ``--converter_kwargs``: torch's TorchScript-based exporter (its default, dynamo, needs the
``onnxscript`` package) and a free batch size."""


def test_onnx_export_matches_the_eager_model(trained_bundle, tmp_path):
    import numpy as np
    import onnxruntime
    from monai.bundle import onnx_export
    from monai.networks.utils import convert_to_onnx

    from monai_vqbrain.networks import VQVAE
    from monai_vqbrain.utils import load_network_weights

    checkpoint = trained_bundle / "models" / "model.pt"
    exported = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        # the legacy exporter hands forward's defaults in as tensors: the trace must not branch on them
        warnings.simplefilter("error", torch.jit.TracerWarning)
        onnx_export(net_id="inference_network_def", filepath=str(exported), ckpt_file=str(checkpoint),
                    meta_file=str(META), config_file=[TRAIN, INFER], use_trace=True,
                    input_shape=[1, 1, 32, 32], converter_kwargs=dict(ONNX_CONVERTER),
                    **{f"network_def#{key}": value for key, value in TINY_NETWORK.items()})
    eager = VQVAE(**TINY_NETWORK, forward_output="reconstruction").eval()
    load_network_weights(eager, checkpoint, {"image_size": 32})
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # another batch size
    (pred,) = session.run(["pred"], {"image": images.numpy()})

    # the quantizer (distances, argmin, lookup) exports too: the same code maps as in PyTorch, except where two codes
    # are equally near a latent (ONNX Runtime sums the distances in another order, so a near-tie may go either way)
    class Codes(torch.nn.Module):
        def __init__(self, vqvae: VQVAE) -> None:
            super().__init__()
            self.vqvae = vqvae

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vqvae.index_quantize(x)

    codes_file = tmp_path / "codes.onnx"
    convert_to_onnx(Codes(eager), inputs=[images], filename=str(codes_file), use_trace=True,
                    **{**ONNX_CONVERTER, "output_names": ["codes"],
                       "dynamic_axes": {"image": {0: "batch"}, "codes": {0: "batch"}}})
    codes_session = onnxruntime.InferenceSession(str(codes_file), providers=["CPUExecutionProvider"])
    (codes,) = codes_session.run(["codes"], {"image": images.numpy()})
    codes = torch.from_numpy(codes).long()
    with torch.no_grad():
        eager_codes = eager.index_quantize(images)
        latents = eager.encode(images).movedim(1, -1)  # (B, h, w, D)
        distances = ((latents[..., None, :] - eager.quantizer.embedding) ** 2).sum(-1)  # (B, h, w, K)
        differ = codes != eager_codes
        gap = (distances.gather(-1, codes[..., None]) - distances.gather(-1, eager_codes[..., None]))[..., 0].abs()
        assert differ.float().mean() <= 0.01, f"{int(differ.sum())} of {differ.numel()} codes differ"
        assert torch.all(gap[differ] <= 1e-4 * distances.amin(-1)[differ].clamp_min(1e-3)), "a code differs beyond a tie"
        # the exported decoder matches PyTorch's on the same codes
        np.testing.assert_allclose(pred, eager.decode_samples(codes).numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# bundle_root from the config files' location

def test_bundle_root_follows_the_config_files(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from monai_vqbrain.workflows import config_bundle_root, settings

    # the running ConfigWorkflow's config_root_path: the first config file's folder (MONAI sets it; a pinned test
    # in test_monai_adapter.py checks that it does and that the workflow is found)
    def running(root):
        monkeypatch.setattr(settings, "running_workflow", lambda: None if root is None else SimpleNamespace(
            config_root_path=root))

    running(tmp_path / "mybundle" / "configs")
    assert config_bundle_root() == str(tmp_path / "mybundle")
    running(tmp_path)
    assert config_bundle_root() == str(tmp_path)
    # no workflow: refused, not a folder below the working directory
    running(None)
    user_error(SettingError, "bundle_root must be set", config_bundle_root)
    assert config_bundle_root(default="bundle") == str(Path("bundle").absolute())


def test_bundle_root_follows_the_config_files_of_a_workflow_created_from_python(tmp_path, monkeypatch):
    import shutil

    from monai.bundle import ConfigParser, create_workflow

    bundle = tmp_path / "mybundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    workflow = create_workflow(config_file=[str(bundle / "configs" / "train.json")], workflow_type="train",
                               **TINY_OVERRIDES)
    assert workflow.parser.get_parsed_content("bundle_root") == str(bundle)
    assert workflow.parser.get_parsed_content("ckpt_dir") == str(bundle / "models")
    # a bare ConfigParser does not know where its files are: it must be told, not write below the working directory
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    user_error(SettingError, "bundle_root must be set when the config is parsed without a monai.bundle workflow",
               parser.get_parsed_content, "ckpt_dir")
    parser["bundle_root"] = str(bundle)
    assert parser.get_parsed_content("ckpt_dir") == str(bundle / "models")
    assert list(elsewhere.iterdir()) == []


def test_inference_command_works_from_outside_the_repository(trained_bundle, demo_root, tmp_path):
    import shutil
    import subprocess
    import sys

    bundle = tmp_path / "mybundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    (bundle / "models").mkdir()
    shutil.copy(trained_bundle / "models" / "model.pt", bundle / "models" / "model.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = sorted((demo_root / "keras_png_slices_test").glob("*.png"))[0]
    configs = f"['{bundle}/configs/train.json','{bundle}/configs/inference.json']"
    tiny = [f"--{key}={json.dumps(value)}" for key, value in TINY_OVERRIDES.items()]
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", configs,
               "--input", str(image), *tiny]
    result = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the checkpoint and the default output folder are found below the bundle, not the working directory
    assert (bundle / "outputs" / "inference" / image.name.replace(".png", "_recon.png")).is_file()
    assert not any(elsewhere.iterdir())
