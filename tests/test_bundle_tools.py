"""MONAI's bundle tools on this bundle: verify_metadata (offline), verify_net_in_out, ckpt_export, outside use."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO_ROOT, TINY_NETWORK, TINY_OVERRIDES, TRAIN
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

from monai_vqbrain.networks import VQVAE
from monai_vqbrain.utils import load_network_weights

INFER = [TRAIN, str(CONFIGS / "inference.json")]
META = str(CONFIGS / "metadata.json")
SCHEMA = CONFIGS / "schema" / "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
"""md5 of the bundled schema copy; ``verify_metadata --hash_val`` checks the file against it."""

NETWORK = TINY_NETWORK


@pytest.fixture
def no_network(monkeypatch):
    """Make any download attempt fail loudly."""
    import urllib.request

    import monai.apps.utils

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


def test_schema_copy_is_the_published_schema():
    from jsonschema.validators import validator_for

    assert hashlib.md5(SCHEMA.read_bytes()).hexdigest() == SCHEMA_MD5
    schema = json.loads(SCHEMA.read_text())
    validator_for(schema).check_schema(schema)
    assert schema["required"] == ["schema", "version", "monai_version", "pytorch_version", "numpy_version",
                                  "required_packages_version", "task", "description", "authors", "copyright",
                                  "network_data_format"]
    metadata = json.loads(Path(META).read_text())
    assert Path(metadata["schema"]).name == SCHEMA.name, "the bundled copy is the schema the metadata names"


def test_verify_metadata_offline(no_network):
    verify_metadata(meta_file=META, filepath=str(SCHEMA), hash_val=SCHEMA_MD5)


def test_verify_metadata_rejects_incomplete_metadata(no_network, tmp_path):
    metadata = json.loads(Path(META).read_text())
    del metadata["authors"]
    meta_file = tmp_path / "metadata.json"
    meta_file.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="authors"):
        verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))


def test_verify_net_in_out_of_the_inference_network():
    # the released network at the metadata's 1x1x128x128 input
    verify_net_in_out(net_id="inference_network_def", meta_file=META, config_file=INFER, device="cpu")


def test_ckpt_export_matches_the_eager_model(trained_bundle, tmp_path):
    checkpoint = trained_bundle / "models" / "model.pt"
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="inference_network_def", filepath=str(exported), ckpt_file=str(checkpoint), meta_file=META,
                config_file=INFER, use_trace=True, input_shape=[1, 1, 32, 32],
                **{k: v for k, v in TINY_OVERRIDES.items() if k.startswith("network_def#")})
    with zipfile.ZipFile(exported) as archive:
        extra = {Path(name).name for name in archive.namelist() if "/extra/" in name}
    assert {"metadata.json", "train.json", "inference.json"} <= extra

    eager = VQVAE(**NETWORK, forward_output="reconstruction").eval()
    load_network_weights(eager, checkpoint, {"image_size": 32})
    scripted = torch.jit.load(str(exported)).eval()
    images = torch.rand(3, 1, 32, 32)  # another batch size than the traced one
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), eager(images), rtol=1e-5, atol=1e-5)


def _monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    network = [f"--network_def#{key}={json.dumps(value)}" for key, value in NETWORK.items()]
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args, *network], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_monai_export_commands_with_their_defaults(trained_bundle, tmp_path):
    """``ckpt_export network_def`` and ``onnx_export network_def`` as MONAI documents them for model-zoo bundles:
    no ``--key_in_ckpt``, no ``--use_trace``, no ``--converter_kwargs`` (torch's default ONNX exporter)."""
    import onnxruntime

    checkpoint = trained_bundle / "models" / "model.pt"
    common = ["--ckpt_file", str(checkpoint), "--meta_file", META, "--config_file", TRAIN]
    eager = VQVAE(**NETWORK, forward_output="reconstruction").eval()
    load_network_weights(eager, checkpoint, {"image_size": 32})
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager(images)

    exported = _monai_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), *common,
                             cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(images), expected, rtol=1e-5, atol=1e-5)

    exported = _monai_bundle("onnx_export", "network_def", "--filepath", str(tmp_path / "model.onnx"), *common,
                             cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    # the metadata's input shape, 1x1x128x128, which the default export takes
    images = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    (onnx_output,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_output), eager(images), rtol=1e-4, atol=1e-4)


# runs `python -m monai.bundle <argv>` as on a machine without the onnx extra: importing onnxscript fails
_WITHOUT_ONNXSCRIPT = textwrap.dedent(
    """
    import os, runpy, sys
    import monai.bundle

    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "onnxscript":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Missing())
    sys.argv = [os.path.join(os.path.dirname(monai.bundle.__file__), "__main__.py"), *sys.argv[1:]]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    """
)


def test_onnx_export_without_the_onnx_extra_says_what_to_install(trained_bundle, tmp_path):
    # issue 25: a raw "ModuleNotFoundError: No module named 'onnxscript'" traceback, with no word of the extra
    checkpoint = trained_bundle / "models" / "model.pt"
    network = [f"--network_def#{key}={json.dumps(value)}" for key, value in NETWORK.items()]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONNXSCRIPT, "onnx_export", "network_def", "--filepath",
         str(tmp_path / "model.onnx"), "--ckpt_file", str(checkpoint), "--meta_file", META, "--config_file", TRAIN,
         *network],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MONAI_VQBRAIN_TRACEBACK": "", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: ONNX export (onnx_export) needs the optional module 'onnxscript', which is not installed: "
        'pip install "monai_vqbrain[onnx]" (from a checkout: pip install -e ".[onnx]")'
    )
    assert not (tmp_path / "model.onnx").exists()


def test_old_layout_checkpoint_loads_with_one_line_and_converts(trained_bundle, tmp_path, caplog):
    from monai_vqbrain.utils import CONVERT_COMMAND, file_sha256, read_model_metadata
    from monai_vqbrain.utils.convert_checkpoint import main as convert

    models = tmp_path / "models"
    models.mkdir()
    state = torch.load(trained_bundle / "models" / "model.pt", weights_only=True)
    metadata = read_model_metadata(trained_bundle / "models" / "model.pt")
    # the layout before 0.5: the weights under "model" and again at the top level, with the metadata
    torch.save({**state, "model": state, "metadata": metadata}, models / "model.pt")
    with caplog.at_level("WARNING"):
        for _ in range(2):
            assert load_network_weights(VQVAE(**NETWORK), models / "model.pt", {"image_size": 32}) == metadata
    lines = [r.getMessage() for r in caplog.records if "old checkpoint layout" in r.getMessage()]
    assert len(lines) == 1 and CONVERT_COMMAND in lines[0]

    assert convert([str(models)]) == 0
    converted = torch.load(models / "model.pt", weights_only=True)
    VQVAE(**NETWORK).load_state_dict(converted)  # strict
    assert read_model_metadata(models / "model.pt") == metadata
    assert json.loads((models / "model.json").read_text())["weights_sha256"] == file_sha256(models / "model.pt")
    assert convert([str(models)]) == 0  # a second run finds nothing to do


def test_networks_from_the_bundle_in_another_project(trained_bundle, tmp_path):
    script = textwrap.dedent(
        f"""
        from pathlib import Path

        import torch
        from monai.bundle import ConfigParser

        import monai_vqbrain
        from monai_vqbrain.networks import VQVAE
        from monai_vqbrain.utils import load_network_weights

        assert Path.cwd() == Path({str(tmp_path)!r})
        bundle = Path({str(REPO_ROOT / "bundle")!r})
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "inference.json")])
        parser["bundle_root"] = {str(trained_bundle)!r}
        for key, value in {NETWORK!r}.items():
            parser["network_def#" + key] = value
        vqvae = parser.get_parsed_content("network_def")
        assert isinstance(vqvae, VQVAE)
        load_network_weights(vqvae, Path(parser.get_parsed_content("ckpt_dir")) / "model.pt", {{"image_size": 32}})
        network = parser.get_parsed_content("inference_network_def")
        assert network is vqvae, "inference runs the VQ-VAE itself"
        images = torch.rand(2, 1, 32, 32)
        with torch.no_grad():
            assert torch.equal(network.eval()(images), vqvae.eval().reconstruct(images))
            codes = vqvae.index_quantize(images)
        assert codes.shape == (2, 8, 8)
        print("loaded from", monai_vqbrain.__file__)
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded from" in result.stdout
