"""Multi-process training: the distributed helpers, and the multi-GPU bundle overlay run with torchrun on 2 CPUs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser
from monai.data import DistributedSampler

from monai_vqbrain.engines import distributed
from monai_vqbrain.errors import SettingError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"
TRAIN = CONFIGS / "train.json"
MULTI_GPU = CONFIGS / "multi_gpu_train.json"
TRAIN_PRIOR = CONFIGS / "train_prior.json"
MULTI_GPU_PRIOR = CONFIGS / "multi_gpu_train_prior.json"

# the handler lists whose logging handlers must be off on ranks other than 0, per run id:
# (the configs, the multi-GPU overlay, the lists)
RANK_ZERO_LOGGING = {
    "training": ([TRAIN], MULTI_GPU, ("train#handlers", "validate#handlers")),
    "training_prior": ([TRAIN, TRAIN_PRIOR], MULTI_GPU_PRIOR, ("prior_train#handlers", "prior_validate#handlers")),
}
LOGGING_HANDLERS = ("StatsHandler", "TensorBoardStatsHandler", "ignite.handlers.ProgressBar")

TINY = [
    "--image_size", "32", "--train_crop_size", "16", "--batch_size", "4", "--progress", "False", "--max_epochs", "2",
    "--network_def#channels", "[8, 16]", "--network_def#num_res_channels", "8",
    "--network_def#num_embeddings", "32", "--network_def#embedding_dim", "8",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives a single process (world size 1) on a free port."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_device_and_backend_choice(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.distributed_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.device_count() > 1 else None
    if not torch.cuda.is_available():
        assert distributed.distributed_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.distributed_device("cuda")
    elif expected is not None:
        assert distributed.distributed_device("auto") == expected
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.distributed_device("cuda:0")
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"


def test_init_without_torchrun_is_a_clear_error(monkeypatch):
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingError, match="multi-process training must be launched by torchrun"):
        distributed.init_distributed("cpu")


def test_init_wrap_and_destroy_single_process(torchrun_env):
    assert distributed.init_distributed("cpu") is True
    assert distributed.init_distributed("cpu") is False  # idempotent: a second initialize is harmless
    assert dist.get_backend() == "gloo"
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1 and distributed.is_main_process()
    # the overlay's train#sampler (MONAI's DistributedSampler) gives the one rank every item, once
    sampler = DistributedSampler(torch.utils.data.TensorDataset(torch.arange(10.0)), even_divisible=True, shuffle=True)
    assert sorted(sampler) == list(range(10))
    # the overlays' wrapper: no per-forward buffer broadcast, and none of torch's deprecation warnings on every rank
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        wrapped = distributed.distributed_data_parallel(torch.nn.BatchNorm1d(2))
    assert getattr(wrapped, "forward_sync_buffers", getattr(wrapped, "broadcast_buffers", None)) is False
    distributed.destroy_distributed()
    assert not dist.is_initialized()
    distributed.destroy_distributed()  # no group: a no-op


@pytest.mark.parametrize("run_id", list(RANK_ZERO_LOGGING))
def test_logging_handlers_run_on_rank_zero_only_without_the_overlay_naming_handlers_by_position(run_id):
    """The base configs turn their logging handlers off on ranks other than 0 themselves, so adding or reordering a
    handler cannot leave one logging on every rank, and the overlays patch no list index."""
    base, overlay, list_ids = RANK_ZERO_LOGGING[run_id]
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in [*base, overlay]]))
    for list_id in list_ids:
        targets = [handler.get("_target_") for handler in parser[list_id]]
        assert {"StatsHandler", "TensorBoardStatsHandler"} <= set(targets), list_id
        for index, handler in enumerate(parser[list_id]):
            if handler.get("_target_") in LOGGING_HANDLERS:
                assert "is_main_process()" in str(handler.get("_disabled_")), f"{list_id}#{index} runs on all ranks"
    assert not [key for key in json.loads(overlay.read_text()) if "#handlers#" in key], "handlers named by position"


def _run_torchrun(run_id: str, config_files: list[Path], network_id: str, tmp_path: Path, settings: list[str]) -> Path:
    """Run ``run_id`` with torchrun on 2 CPU processes; each rank dumps ``@<network_id>``'s final state.

    Returns:
        The folder of the dumps ``rank0.pt`` and ``rank1.pt``.
    """
    dump_dir = tmp_path / f"dump_{run_id}"
    dump_dir.mkdir()
    # a last overlay, for the test only: after training, each rank saves its weights and buffers
    dump_config = tmp_path / f"dump_{run_id}.json"
    dump_config.write_text(json.dumps({
        f"+{run_id}": [
            f"$torch.save(getattr(@{network_id}, 'module', @{network_id}).state_dict(), "
            f"'{dump_dir}/rank' + str(torch.distributed.get_rank()) + '.pt')"
        ],
    }))
    files = [str(f) for f in config_files] + [str(dump_config)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", run_id,
        "--config_file", json.dumps(files),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--device", "cpu", *TINY, *settings,
    ]
    # one thread per process: the two ranks share the test machine's cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in distributed.TORCHRUN_ENV:
        env.pop(name, None)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return dump_dir


def _assert_ranks_agree(dump_dir: Path, checkpoint: Path) -> dict:
    """Both ranks' final weights and buffers are identical, and equal to the weights saved in ``checkpoint``."""
    rank0 = torch.load(dump_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(dump_dir / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    differing = [key for key in rank0 if not torch.equal(rank0[key], rank1[key])]
    assert not differing, f"ranks ended with different values of {differing}"
    saved = torch.load(checkpoint, weights_only=True)
    saved = saved["model"] if "trainer" in saved else saved  # last.pt holds a training state, model.pt weights
    assert saved.keys() == rank0.keys()
    assert all(torch.equal(saved[key], rank0[key]) for key in rank0), f"{checkpoint.name} differs from the final weights"
    return rank0


def _assert_tensorboard_from_one_process(log_dir: Path) -> None:
    # TensorBoard files are named ...tfevents.<time>.<host>.<pid>.<n>: all must come from one process (rank 0)
    events = list(log_dir.glob("events.out.tfevents.*"))
    assert events and len({path.name.split(".")[-2] for path in events}) == 1, [p.name for p in events]


def test_two_process_training_keeps_ranks_identical_and_writes_once(tmp_path, demo_root):
    bundle_root = tmp_path / "bundle"
    settings = ["--bundle_root", str(bundle_root), "--dataset_dir", str(demo_root)]
    dump_dir = _run_torchrun("training", [TRAIN, MULTI_GPU], "network", tmp_path, settings)

    state = _assert_ranks_agree(dump_dir, bundle_root / "models" / "last.pt")
    # the codebook was initialised from data and then updated from both ranks' (different) batches
    assert bool(state["quantizer.initialized"])
    assert state["quantizer.ema_cluster_size"].sum() > 0

    models = bundle_root / "models"
    assert sorted(p.name for p in models.iterdir()) == ["last.pt", "model.json", "model.pt", "training_history.json"]
    history = json.loads((models / "training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    assert "val_ssim" in history[-1] and "train_loss" in history[-1]
    _assert_tensorboard_from_one_process(bundle_root / "outputs" / "tensorboard")


@pytest.mark.skipif(not (TRAIN_PRIOR.is_file() and MULTI_GPU_PRIOR.is_file()), reason="no prior-training config")
def test_two_process_prior_training(tmp_path, demo_root):
    from monai.bundle import run

    # the prior learns the codes of a trained VQ-VAE: train a tiny one first, in this process
    bundle_root = tmp_path / "bundle"
    vqvae_settings = {key.lstrip("-"): json.loads(value) if value[0] in "[0123456789" else value
                      for key, value in zip(TINY[::2], TINY[1::2], strict=True)}
    vqvae_settings.update(progress=False, max_epochs=1)
    run(run_id="training", config_file=str(TRAIN), bundle_root=str(bundle_root), dataset_dir=str(demo_root),
        device="cpu", **vqvae_settings)

    settings = ["--bundle_root", str(bundle_root), "--dataset_dir", str(demo_root), "--prior_max_epochs", "2",
                "--prior_batch_size", "4", "--prior_def#channels", "8", "--prior_def#num_layers", "2"]
    files = [TRAIN, TRAIN_PRIOR, MULTI_GPU_PRIOR]
    dump_dir = _run_torchrun("training_prior", files, "prior_network", tmp_path, settings)

    models = bundle_root / "models"
    _assert_ranks_agree(dump_dir, models / "prior_last.pt")
    history = json.loads((models / "prior_training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for name in ("prior.pt", "prior_last.pt", "codes_train.pt", "codes_validate.pt"):
        assert (models / name).is_file(), name
    # no leftovers of concurrent writes (atomic writes go through hidden temporary files)
    assert not [p.name for p in models.iterdir() if p.name.startswith(".")]
    _assert_tensorboard_from_one_process(bundle_root / "outputs" / "tensorboard_prior")
