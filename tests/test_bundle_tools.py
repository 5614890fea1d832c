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

from monai_vqbrain.inference import ReconstructionNetwork
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
                config_file=INFER, key_in_ckpt="model", use_trace=True, input_shape=[1, 1, 32, 32],
                **{k: v for k, v in TINY_OVERRIDES.items() if k.startswith("network_def#")})
    with zipfile.ZipFile(exported) as archive:
        extra = {Path(name).name for name in archive.namelist() if "/extra/" in name}
    assert {"metadata.json", "train.json", "inference.json"} <= extra

    eager = ReconstructionNetwork(VQVAE(**NETWORK)).eval()
    load_network_weights(eager.vqvae, checkpoint, {"image_size": 32})
    scripted = torch.jit.load(str(exported)).eval()
    images = torch.rand(3, 1, 32, 32)  # another batch size than the traced one
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), eager(images), rtol=1e-5, atol=1e-5)


def test_networks_from_the_bundle_in_another_project(trained_bundle, tmp_path):
    script = textwrap.dedent(
        f"""
        from pathlib import Path

        import torch
        from monai.bundle import ConfigParser

        import monai_vqbrain
        from monai_vqbrain.networks import VQVAE, VQVAEReconstructor
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
        assert isinstance(network, VQVAEReconstructor) and network.vqvae is vqvae
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
