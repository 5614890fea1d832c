"""The generative preset (``generative.json``): a coarser code and a decoder trained on near-miss codes, trained by
the same ``training`` run id into its own checkpoint folder; ``adversarial.json`` adds a patch adversarial loss."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, TRAIN, run_bundle

from monai_vqbrain.engines import PatchAdversarialTerm

GENERATIVE = [TRAIN, str(CONFIGS / "generative.json"), str(CONFIGS / "adversarial.json")]
# three levels (the preset's 8x downsampling), tiny; the adversarial term from the first epoch
TINY_GENERATIVE = {
    "network_def#channels": [8, 16, 16],
    "adversarial#start_epoch": 1,
    "discriminator#channels": 8,
    "discriminator#num_layers_d": 2,
}


@pytest.fixture(scope="module")
def generative_bundle(tmp_path_factory, demo_root):
    bundle_root = tmp_path_factory.mktemp("generative_bundle")
    run_bundle("training", GENERATIVE, bundle_root=str(bundle_root), dataset_dir=str(demo_root), max_epochs=2,
               **TINY_GENERATIVE)
    return bundle_root


def test_generative_preset_trains_into_its_own_folder_and_logs_the_adversarial_parts(generative_bundle):
    models = generative_bundle / "models" / "generative"
    assert (models / "model.pt").is_file() and not (generative_bundle / "models" / "model.pt").exists()
    history = json.loads((models / "training_history.json").read_text())
    record = history[-1]
    assert record["train_adversarial"] > 0 and record["train_discriminator"] > 0
    # the decoder's adversarial loss is in the total with the preset's weight
    assert record["train_loss"] == pytest.approx(
        record["train_reconstruction"] + record["train_vq"] + 0.01 * record["train_adversarial"], rel=1e-4
    )
    state = torch.load(models / "last.pt", weights_only=True)
    # the discriminator is saved with the run, so that a resumed run goes on with it
    assert {"discriminator", "discriminator_optimizer"} <= set(state)
    weights = torch.load(models / "model.pt", weights_only=True)
    assert any(key.startswith("encoder.levels.2.") for key in weights)  # the preset's third downsampling


def test_generative_preset_resumes_with_its_discriminator(generative_bundle, demo_root):
    models = generative_bundle / "models" / "generative"
    before = torch.load(models / "last.pt", weights_only=True)["discriminator"]
    run_bundle("training", GENERATIVE, bundle_root=str(generative_bundle), dataset_dir=str(demo_root), max_epochs=3,
               resume=True, **TINY_GENERATIVE)
    history = json.loads((models / "training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    after = torch.load(models / "last.pt", weights_only=True)["discriminator"]
    assert any(not torch.equal(before[key], after[key]) for key in before if before[key].is_floating_point())


def test_the_generative_commands_train_sample_and_measure_in_their_own_folders(tmp_path, demo_root):
    # the README's three commands, generative.json last in each list
    base = {"bundle_root": str(tmp_path), "dataset_dir": str(demo_root), "network_def#channels": [8, 16, 16]}
    run_bundle("training", [TRAIN, str(CONFIGS / "generative.json")], max_epochs=1, **base)
    models = tmp_path / "models" / "generative"
    history = json.loads((models / "training_history.json").read_text())
    assert "train_adversarial" not in history[-1]  # design d: no discriminator without adversarial.json
    prior = {"prior_def#channels": 8, "prior_def#num_layers": 2, "prior_def#kernel_size": 3, "prior_batch_size": 4}
    run_bundle("training_prior", [TRAIN, str(CONFIGS / "train_prior.json"), str(CONFIGS / "generative.json")],
               prior_max_epochs=1, **base, **prior)
    assert (models / "prior.pt").is_file() and not (tmp_path / "models" / "prior.pt").exists()
    run_bundle("generating", [TRAIN, str(CONFIGS / "generate.json"), str(CONFIGS / "generative.json")],
               num_samples=4, generation_metrics=False, **base)
    generated = tmp_path / "outputs" / "generative" / "generated"
    assert len(list(generated.glob("sample_*.png"))) == 4
    assert json.loads((generated / "generation_metrics.json").read_text())["code_size"] == [4, 4]  # 32 / 8


def test_adversarial_term_waits_for_its_start_epoch_and_trains_the_discriminator():
    from monai.networks.nets import PatchDiscriminator

    torch.manual_seed(0)
    discriminator = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=2)
    term = PatchAdversarialTerm(discriminator, torch.optim.Adam(discriminator.parameters(), lr=1e-2), start_epoch=3)
    assert not term.active(2) and term.active(3)
    real, fake = torch.rand(8, 1, 16, 16), torch.zeros(8, 1, 16, 16)
    losses = [float(term.discriminator_step(fake, real, torch.device("cpu"), False)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]  # it learns to tell the flat images from the textured ones
    assert float(term.generator_loss(fake)) > float(term.generator_loss(real))


@pytest.mark.parametrize("kwargs", [{"weight": -1.0}, {"start_epoch": 0}, {"start_epoch": 1.5}])
def test_adversarial_term_arguments_are_checked(kwargs):
    discriminator = torch.nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match="adversarial"):
        PatchAdversarialTerm(discriminator, torch.optim.SGD(discriminator.parameters(), lr=0.1), **kwargs)


def test_what_to_run_next_keeps_the_generative_preset_last():
    from monai_vqbrain.workflows import next_step_commands

    argv = ["/site-packages/monai/bundle/__main__.py", "run", "training", "--config_file",
            "['bundle/configs/train.json','bundle/configs/generative.json']", "--max_epochs", "3", "--image_size", "64"]
    commands = dict(next_step_commands("training", argv))
    prior = commands["train the prior over its codes (to generate new slices)"]
    assert "['bundle/configs/train.json','bundle/configs/train_prior.json','bundle/configs/generative.json']" in prior
    assert "--image_size 64" in prior and "--max_epochs" not in prior
    argv[2], argv[4] = "training_prior", "['bundle/configs/train.json','bundle/configs/train_prior.json','bundle/configs/generative.json']"
    (generate,) = [command for _, command in next_step_commands("training_prior", argv)]
    assert "['bundle/configs/train.json','bundle/configs/generate.json','bundle/configs/generative.json']" in generate
