"""The bundle as MONAI's generic tools and the model-zoo conventions expect it: licence, metadata, standard ids."""

from __future__ import annotations

import json

import torch
from conftest import CONFIGS, REPO_ROOT, TRAIN

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
