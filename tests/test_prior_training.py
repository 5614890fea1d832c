"""The PixelCNN prior and its training: slice-position labels and code maps, the code cache, the prior's code metrics,
the bundle's training_prior and the prior presets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import copy_models, generate, tiny_vqvae, train_prior, user_error
from PIL import Image

from monai_vqbrain.data import get_dataset
from monai_vqbrain.errors import CheckpointError, SettingError
from monai_vqbrain.networks import VQVAE
from monai_vqbrain.prior import (
    CodeAccuracyMetric,
    CodeDataset,
    CodeNLLMetric,
    PriorPrepareBatch,
    SlicePositionLabels,
    file_sha256,
    load_or_encode_codes,
    load_prior,
    parse_slice_index,
    position_channels,
    position_map,
)
from monai_vqbrain.prior import codes as codes_module
from monai_vqbrain.utils import read_model_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slice_index_is_parsed_from_oasis_and_nifti_names():
    assert parse_slice_index("case_001_slice_10.nii.png") == 10
    assert parse_slice_index("OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz#slice45") == 45
    assert parse_slice_index("brain.png") is None


def test_slice_position_labels_bin_the_training_range_and_spread_samples_like_the_data():
    train = {"slice_indices": torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 7, 7])}
    labels = SlicePositionLabels.fit("slice_position", 4, train)
    assert labels.index_range == (0, 7)
    assert labels(train["slice_indices"]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert labels.class_counts == [2, 2, 2, 4]
    assert labels([None, -1, 99]).tolist() == [2, 2, 3]  # unknown -> middle bin; beyond the range -> clipped
    samples = labels.sample_labels(10)
    assert samples.tolist() == sorted(samples.tolist()) and torch.bincount(samples).tolist() == [2, 2, 2, 4]
    rebuilt = SlicePositionLabels.from_metadata(labels.to_metadata())
    assert rebuilt(train["slice_indices"]).tolist() == labels(train["slice_indices"]).tolist()


def test_names_without_slice_index_still_train_with_one_class():
    labels = SlicePositionLabels.fit("slice_position", 4, {"slice_indices": torch.tensor([-1, -1, -1])})
    assert labels.index_range is None and labels([-1, -1, -1]).tolist() == [0, 0, 0]
    assert labels.sample_labels(3).tolist() == [0, 0, 0]
    unconditioned = SlicePositionLabels.fit("none", 4, {"slice_indices": torch.tensor([0, 1])})
    assert unconditioned.num_classes is None and unconditioned([0, 1]) is None
    with pytest.raises(ValueError, match="prior_conditioning"):
        SlicePositionLabels("slice_index", 4)


def test_code_dataset_and_prepare_batch_pass_labels_to_the_prior():
    cache = {"codes": torch.randint(0, 32, (3, 8, 8), dtype=torch.int16), "names": ["a", "b", "c"],
             "slice_indices": torch.tensor([0, 5, 9])}
    labels = SlicePositionLabels.fit("slice_position", 2, cache)
    item = CodeDataset(cache, labels)[1]
    assert item["codes"].dtype == torch.long and item["label"].item() == 1 and item["name"] == "b"
    batch = torch.utils.data.default_collate([CodeDataset(cache, labels)[i] for i in range(3)])
    codes, targets, args, kwargs = PriorPrepareBatch()(batch, torch.device("cpu"))
    assert codes is targets and args == () and kwargs["class_labels"].tolist() == [0, 1, 1]
    assert "label" not in CodeDataset(cache, None)[0]


def test_position_features_tell_the_prior_where_it_is():
    features = position_map((6, 8), 2)
    assert features.shape == (8, 6, 8) and position_channels(2) == 8 and position_channels(0) is None
    assert torch.equal(features[:4, :, 0], features[:4, :, 7])  # row features are constant along a row
    assert torch.equal(features[4:, 0, :], features[4:, 5, :])  # column features are constant along a column
    assert len({tuple(features[:, r, c].tolist()) for r in range(6) for c in range(8)}) == 48  # all distinct
    batch = {"codes": torch.zeros(3, 6, 8, dtype=torch.long)}
    _, _, _, kwargs = PriorPrepareBatch(position_frequencies=2)(batch, torch.device("cpu"))
    assert kwargs["cond_map"].shape == (3, 8, 6, 8) and torch.equal(kwargs["cond_map"][2], features)
    assert "cond_map" not in PriorPrepareBatch()(batch, torch.device("cpu"))[3]


def test_code_cache_is_reused_and_invalidated(trained_bundle, demo_root, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    vqvae = tiny_vqvae(trained_bundle / "models" / "model.pt")
    sha = file_sha256(trained_bundle / "models" / "model.pt")
    kwargs = {"dataset_dir": data, "dataset_format": "auto", "num_workers": 0}
    cache = tmp_path / "codes_validate.pt"

    first = load_or_encode_codes(cache, vqvae, sha, kwargs, "validate", 32)
    dataset = get_dataset(data, "validate", image_size=32)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        assert torch.equal(first["codes"].long(), vqvae.index_quantize(images))
    assert first["names"] == [dataset[i]["name"] for i in range(len(dataset))]
    assert first["slice_indices"].tolist() == [parse_slice_index(n) for n in first["names"]]

    encodings = []
    real_encode = codes_module.encode_dataset
    monkeypatch.setattr(codes_module, "encode_dataset", lambda *a, **k: encodings.append(1) or real_encode(*a, **k))
    assert torch.equal(load_or_encode_codes(cache, vqvae, sha, kwargs, "validate", 32)["codes"], first["codes"])
    assert encodings == [], "a matching cache must be read, not recomputed"

    load_or_encode_codes(cache, vqvae, "0" * 64, kwargs, "validate", 32)  # another VQ-VAE checkpoint
    assert len(encodings) == 1
    changed = sorted((data / "keras_png_slices_validate").glob("*.png"))[0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the data changed
    load_or_encode_codes(cache, vqvae, "0" * 64, kwargs, "validate", 32)
    assert len(encodings) == 2
    load_or_encode_codes(cache, vqvae, "0" * 64, kwargs, "validate", 32)
    assert len(encodings) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "atomic writes leave no temporary file"


def test_code_metrics_in_bits_per_code_and_accuracy():
    codes = torch.randint(0, 16, (2, 4, 4))
    uniform = torch.zeros(2, 16, 4, 4)
    nll = CodeNLLMetric()
    nll(uniform, codes)
    assert nll.aggregate().item() == pytest.approx(4.0)  # log2(16) bits for a uniform guess
    sure = torch.nn.functional.one_hot(codes, 16).permute(0, 3, 1, 2).float() * 50
    accuracy = CodeAccuracyMetric()
    accuracy(sure, codes)
    accuracy(sure.roll(1, dims=1), codes)
    assert accuracy.aggregate().item() == pytest.approx(0.5)


def test_training_prior_writes_checkpoints_cache_and_history(prior_root):
    models = prior_root / "models"
    for name in ("prior.pt", "prior_last.pt", "codes_train.pt", "codes_validate.pt", "prior_training_history.json"):
        assert (models / name).is_file(), name
    history = json.loads((models / "prior_training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for key in ("train_bits_per_code", "train_accuracy", "val_bits_per_code", "val_accuracy"):
        assert key in history[-1], key
    best = torch.load(models / "prior.pt", weights_only=True)
    assert "metadata" not in best and "model" not in best, "prior.pt holds the state dict only"
    metadata = read_model_metadata(models / "prior.pt")
    assert metadata["key_metric"] == pytest.approx(min(r["val_bits_per_code"] for r in history))
    assert metadata["network"] == "GatedPixelCNN" and metadata["network_settings"]["channels"] == 8
    assert metadata["network_settings"]["num_embeddings"] == 32 and metadata["code_size"] == [8, 8]
    assert metadata["vqvae_sha256"] == file_sha256(models / "model.pt")
    assert metadata["conditioning"]["type"] == "slice_position" and metadata["conditioning"]["num_bins"] == 4
    assert metadata["position_frequencies"] == 4 and metadata["network_settings"]["cond_channels"] == 16
    assert torch.load(models / "prior_last.pt", weights_only=True)["metadata"]["epoch"] == 2
    assert (prior_root / "outputs" / "tensorboard_prior").is_dir()
    with Image.open(prior_root / "outputs" / "prior_learning_curves.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > 400


def test_training_prior_does_not_overwrite_unless_asked(prior_root, demo_root):
    before = (prior_root / "models" / "prior.pt").read_bytes()
    user_error(CheckpointError, "already exists", train_prior, prior_root, demo_root)
    # as the command line passes it: the string "false" must not resume
    user_error(CheckpointError, "already exists", train_prior, prior_root, demo_root, resume="false")
    assert (prior_root / "models" / "prior.pt").read_bytes() == before


def test_training_prior_resumes_and_reuses_the_code_cache(prior_root, demo_root, tmp_path):
    copy_models(prior_root, tmp_path)
    cache_bytes = (tmp_path / "models" / "codes_train.pt").read_bytes()
    train_prior(tmp_path, demo_root, prior_max_epochs=3, resume=True)
    history = json.loads((tmp_path / "models" / "prior_training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert torch.load(tmp_path / "models" / "prior_last.pt", weights_only=True)["metadata"]["epoch"] == 3
    best = read_model_metadata(tmp_path / "models" / "prior.pt")
    assert best["key_metric"] == pytest.approx(min(r["val_bits_per_code"] for r in history))
    assert (tmp_path / "models" / "codes_train.pt").read_bytes() == cache_bytes


def test_training_prior_saves_the_asked_epoch_snapshots(trained_bundle, demo_root, tmp_path):
    copy_models(trained_bundle, tmp_path, ("model.pt",))
    train_prior(tmp_path, demo_root, prior_max_epochs=3, prior_save_epochs=[1, 3])
    models = tmp_path / "models"
    assert sorted(p.name for p in models.glob("prior_epoch_*.pt")) == ["prior_epoch_1.pt", "prior_epoch_3.pt"]
    first, last = (torch.load(models / f"prior_epoch_{e}.pt", weights_only=True) for e in (1, 3))
    assert [read_model_metadata(models / f"prior_epoch_{e}.pt")["epoch"] for e in (1, 3)] == [1, 3]
    final = torch.load(models / "prior_last.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert not all(torch.equal(first[k], final[k]) for k in final)
    # a snapshot is a prior checkpoint the sampler loads like the best model
    prior, metadata = load_prior(models / "prior_epoch_1.pt", "cpu", vqvae=tiny_vqvae(models / "model.pt"))
    assert metadata["epoch"] == 1
    user_error(SettingError, "prior_save_epochs", train_prior, tmp_path / "other", demo_root, prior_save_epochs=[0])


def test_training_prior_without_vqvae_is_a_clear_error(tmp_path, demo_root):
    user_error(CheckpointError, "train it first", train_prior, tmp_path, demo_root)
    assert not (tmp_path / "models" / "prior.pt").exists()


def test_unconditioned_prior_trains_and_generates(trained_bundle, demo_root, tmp_path):
    copy_models(trained_bundle, tmp_path)
    train_prior(tmp_path, demo_root, prior_max_epochs=1, prior_conditioning="none")
    metadata = read_model_metadata(tmp_path / "models" / "prior.pt")
    assert metadata["network_settings"]["num_classes"] is None
    out = generate(tmp_path, demo_root, num_samples=2)
    metrics = json.loads((out / "generation_metrics.json").read_text())
    assert metrics["prior_conditioning"] == "none" and metrics["sample_class_labels"] is None


def test_slice_position_bins_are_described_by_their_slices():
    labels = SlicePositionLabels("slice_position", 4, index_range=(0, 15), class_counts=[4, 4, 4, 4])
    assert [labels.bin_description(b) for b in range(4)] == [
        "slices 0-3 of 0-15", "slices 4-7 of 0-15", "slices 8-11 of 0-15", "slices 12-15 of 0-15"
    ]
    assert SlicePositionLabels("none", 4).bin_description(0) == ""


def test_prior_large_preset_is_a_larger_prior_of_the_same_recipe():
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train.json", "train_prior.json", "prior_large.json")])
    prior = parser.get_parsed_content("prior_def")
    default = ConfigParser()
    default.read_config([str(configs / name) for name in ("train.json", "train_prior.json")])
    small = default.get_parsed_content("prior_def")
    assert (prior.channels, prior.num_layers) == (128, 20) and (small.channels, small.num_layers) == (48, 12)
    assert prior.layers[1].dropout.p == 0.1 and small.layers[1].dropout.p == 0.0
    assert prior.num_embeddings == small.num_embeddings and prior.num_classes == small.num_classes
    assert parser.get_parsed_content("prior_max_epochs") == 40


def test_prior_quality_preset_is_the_default_prior_on_a_longer_schedule():
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    quality, default = ConfigParser(), ConfigParser()
    quality.read_config([str(configs / name) for name in ("train.json", "train_prior.json", "prior_quality.json")])
    default.read_config([str(configs / name) for name in ("train.json", "train_prior.json")])
    assert quality.get_parsed_content("prior_max_epochs") == 30 > default.get_parsed_content("prior_max_epochs") == 12
    # the same network and optimiser: only the schedule is longer (the cosine follows prior_max_epochs)
    assert quality["prior_def"] == default["prior_def"]
    for key in ("prior_batch_size", "prior_learning_rate", "prior_conditioning", "prior_slice_bins"):
        assert quality[key] == default[key], key
    assert quality["prior_lr_scheduler"]["T_max"] == "@prior_max_epochs"


def test_encoding_the_codes_says_what_it_does_and_how_far_it_is(caplog):
    # issue 25: encoding a split was minutes of silence under load
    import logging

    from monai_vqbrain.prior import encode_dataset

    vqvae = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16), num_res_channels=8,
                  num_embeddings=16, embedding_dim=8)
    items = [{"image": torch.rand(1, 16, 16), "name": f"case_{i:03d}_slice_0.nii.png"} for i in range(8)]
    with caplog.at_level(logging.INFO, logger="monai_vqbrain.prior.codes"):
        codes, names = encode_dataset(vqvae, items, batch_size=2)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "encoding 8 slices to code maps"
    assert [message.split(" (")[0] for message in messages[1:]] == [
        "encoding: 2/8 slices", "encoding: 4/8 slices", "encoding: 6/8 slices"
    ]
    assert codes.shape == (8, 4, 4) and len(names) == 8


def test_the_prior_encodes_the_images_of_the_configs_preprocessing(tmp_path, demo_root):
    # issue 24: the preprocessing is declared once, in the config; the prior's codes are of the images it makes
    from conftest import CONFIGS, TINY_NETWORK
    from monai.transforms import Compose, Lambdad

    from monai_vqbrain.data import get_slice_transforms

    vqvae = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, **TINY_NETWORK).eval()
    kwargs = {"dataset_dir": str(demo_root), "image_size": 32, "num_workers": 0, "cache_rate": 1.0}
    seen = []
    preprocessing = Compose([*get_slice_transforms(32).transforms, Lambdad("image", lambda image: seen.append(1) or image)])
    codes = load_or_encode_codes(tmp_path / "config.pt", vqvae, "sha", kwargs, "train", 32, preprocessing=preprocessing)
    default = load_or_encode_codes(tmp_path / "default.pt", vqvae, "sha", kwargs, "train", 32)
    assert len(seen) == len(codes["names"]) > 0, "every image went through the given preprocessing"
    assert codes["names"] == default["names"] and torch.equal(codes["codes"], default["codes"])
    prior_codes = json.loads((CONFIGS / "train_prior.json").read_text())["prior_codes"]
    assert all("preprocessing=@preprocessing" in call for call in prior_codes.values())
