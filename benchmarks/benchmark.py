"""Speed benchmarks of the monai_vqbrain recipe, measured side by side in one run on the same machine and data.

Sections (choose with ``--sections``):

``throughput``
    Training images/s of the VQ-VAE recipe (``network_def`` etc. of ``bundle/configs/train.json``, built through
    ``monai.bundle.ConfigParser``) run three ways: MONAI's ``VQVAETrainer`` with every handler of ``train.json``,
    a bare PyTorch loop doing the same iteration over the same data loader, and the bare loop over batches
    already on the device; plus MONAI's own ``monai.networks.nets.VQVAE`` (comparable size) in the bare loop.
    The ratios give the bundle/Ignite overhead and the speed relative to MONAI's network.
``precision``
    fp32 vs mixed precision (bf16 autocast; fp16 on GPUs without bf16) for both networks, each in a fresh child
    process so its peak memory is its own: peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
``convergence``
    Training time to a validation SSIM target (0.95), for our recipe and MONAI's VQVAE, each under a wall-clock
    cap, evaluated every K steps on the validate split; "not reached" is reported as such.
``inference``
    Reconstruction latency per slice (batch 1) and per 3D volume (synthetic, sliced axially, batches of 32), with
    ``VQVAE.reconstruct``, in fp32 and mixed precision.
``sampling``
    PixelCNN prior sampling, naive (one full forward pass per position) vs the cached fast path, in samples/s.
    The naive sampler on the full code grid is extrapolated from the time of one full forward pass; both
    samplers are also run to completion on a small grid, where their outputs are checked to be identical.

Run ``python benchmarks/benchmark.py --help``; ``--quick`` is a smoke run with tiny sizes (seconds to minutes).
Results are written as JSON and as a Markdown table with the machine's details into the folder ``--output``
(``benchmark.json``, ``benchmark.md``). The demo data, checkpoints and logs of the run go into a new folder of its
own (in ``--work-dir``, default the system's temporary folder), removed at the end unless ``--keep-work-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import logging
import logging.config
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"
TRAIN_CONFIG = CONFIGS / "train.json"
TRAIN_PRIOR_CONFIG = CONFIGS / "train_prior.json"
SECTIONS = ("throughput", "precision", "convergence", "inference", "sampling", "main_job")
#: the report's files in the ``--output`` folder
REPORT_JSON, REPORT_MARKDOWN = "benchmark.json", "benchmark.md"

#: environment that caps oneDNN's and ATen's CPU dispatch to AVX2: it emulates a CPU without AVX-512 and native
#: bf16 (most laptops and many cloud machines), where bf16 autocast is emulated and several times slower than fp32
DISPATCH_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}

#: MONAI VQVAE settings of the comparison: the same 2 levels of 4x4 stride-2 (de)convolutions (4x downsampling),
#: the same channels, codebook and EMA decay as train.json; MONAI puts residual units at every level, so one per
#: level with half-width bottlenecks gives about the same parameter count (0.81M vs 0.82M for the defaults).
MONAI_VQVAE_ARGS: dict[str, Any] = {
    "num_res_layers": 1,
    "num_res_channels_ratio": 0.5,
    "downsample_parameters": [[2, 4, 1, 1], [2, 4, 1, 1]],
    "upsample_parameters": [[2, 4, 1, 1, 0], [2, 4, 1, 1, 0]],
}

QUICK = {
    "image_size": 32,
    "batch_size": 4,
    "demo_cases": [4, 2, 2],
    "demo_slices": 4,
    "demo_size": 64,
    "iters": 3,
    "warmup": 1,
    "sync_iters": 2,
    "repeats": 1,
    "convergence_cap": 5.0,
    "eval_every": 2,
    "volume_shape": [16, 20, 12],
    "inference_batch": 4,
    "inference_repeats": 2,
    "sample_batch": 2,
    "naive_grid": 3,
    "prior_args": {"channels": 16, "num_layers": 2},
    "overrides": {
        "network_def#channels": [8, 16],
        "network_def#num_res_channels": 8,
        "network_def#num_embeddings": 32,
        "network_def#embedding_dim": 8,
        "progress": False,
    },
}

logger = logging.getLogger("benchmark")


# ------------------------------------------------------------------------------------------------------ utilities
def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_mib(field: str) -> float | None:
    """A memory field of Linux ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB, or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (NaN where ``/proc`` is unavailable)."""
    value = _proc_status_mib("VmRSS")
    return float("nan") if value is None else value


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS record (Linux ``clear_refs``), so a later peak is that of the work after it.

    Returns:
        False where it cannot be reset; :func:`peak_rss_mib` then reports the peak of the whole process life.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory in MiB since :func:`reset_peak_rss` (Linux ``VmHWM``), else since the process start."""
    value = _proc_status_mib("VmHWM")
    if value is not None:
        return value
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@contextlib.contextmanager
def dispatch_env(dispatch: str) -> Iterator[None]:
    """Set the environment of a CPU dispatch level (see :data:`DISPATCH_ENV`) for child processes started inside."""
    saved = {key: os.environ.get(key) for key in DISPATCH_ENV["avx2"]}
    for key in saved:
        os.environ.pop(key, None)
    os.environ.update(DISPATCH_ENV[dispatch])
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cpu_dispatch_info() -> dict[str, Any]:
    """What this process's CPU kernels dispatch to: ATen's capability, native bf16, and the capping variables."""
    from monai_vqbrain.engines import native_bf16

    info: dict[str, Any] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(torch.device("cpu")),
    }
    info.update({key: os.environ[key] for key in DISPATCH_ENV["avx2"] if key in os.environ})
    return info


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU (with its bf16 support), GPU, library versions and thread settings, for the results table."""
    import monai

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    info: dict[str, Any] = {
        "cpu": cpu,
        **cpu_dispatch_info(),
        "cpu_flags_bf16": " ".join(sorted(f for f in flags if "bf16" in f or f.startswith("amx"))) or "none",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
    }
    with contextlib.suppress(ImportError):
        import ignite

        info["ignite"] = ignite.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip() + (" (with local changes)" if dirty.stdout.strip() else "")
    return info


def cycle(loader: Any) -> Iterator[Any]:
    """Batches of ``loader`` forever, a new pass (and shuffle) after each, as Ignite does when it runs out."""
    while True:
        yield from loader


def count_parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


# --------------------------------------------------------------------------------------------- recipe and models
@dataclass
class Recipe:
    """What the benchmark trains, all taken from the bundle config (with the command line's overrides).

    Attributes:
        overrides: the config overrides used (for rebuilding the trainer).
        device: the training device.
        network: an untrained copy of the config's ``network_def`` (never trained: copy it before use).
        loss: the config's ``loss`` (stateless).
        optimizer_cls: the class of the config's ``optimizer``.
        optimizer_kwargs: its constructor arguments (``lr``, ...), so the bare loops use the same optimizer.
        amp: the config's ``amp`` resolved for ``device`` (``"auto"``: mixed precision only where it is native).
        max_grad_norm: the config's ``max_grad_norm``.
        prepare_batch: the config's ``prepare_batch``.
        train_dataset: the cached train split (shared by every loader).
        validate_dataset: the cached validate split.
        train_loader: the config's ``train#dataloader``.
        image_size: the side of the square training images.
        batch_size: images per training step.
    """

    overrides: dict[str, Any]
    device: torch.device
    network: torch.nn.Module
    loss: torch.nn.Module
    optimizer_cls: type
    optimizer_kwargs: dict[str, Any]
    amp: bool
    max_grad_norm: float | None
    prepare_batch: Callable
    train_dataset: Any
    validate_dataset: Any
    train_loader: Any
    image_size: int
    batch_size: int


def build_parser(overrides: dict[str, Any], datasets: tuple[Any, Any] | None = None):
    """A ``ConfigParser`` of ``train.json`` with ``overrides``; already-built datasets are reused when given."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update(overrides)
    if datasets is not None:
        # plain objects in a config are returned as they are: every trainer shares one cached copy of the data
        parser["train#dataset"], parser["validate#dataset"] = datasets
    return parser


def build_recipe(overrides: dict[str, Any]) -> Recipe:
    """Build the recipe's components from ``train.json`` (the benchmark follows the config)."""
    parser = build_parser(overrides)
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    return Recipe(
        overrides=overrides,
        device=parser.get_parsed_content("run_device"),
        network=copy.deepcopy(network),
        loss=parser.get_parsed_content("loss"),
        optimizer_cls=type(optimizer),
        optimizer_kwargs=dict(optimizer.defaults),
        amp=parser.get_parsed_content("use_amp"),
        max_grad_norm=parser.get_parsed_content("max_grad_norm"),
        prepare_batch=parser.get_parsed_content("prepare_batch"),
        train_dataset=parser.get_parsed_content("train#dataset"),
        validate_dataset=parser.get_parsed_content("validate#dataset"),
        train_loader=parser.get_parsed_content("train#dataloader"),
        image_size=int(parser.get_parsed_content("image_size")),
        batch_size=int(parser.get_parsed_content("batch_size")),
    )


def build_monai_vqvae(recipe: Recipe, args: dict[str, Any]) -> torch.nn.Module:
    """MONAI's ``VQVAE`` with the recipe's channels, codebook and EMA decay, and the settings in ``args``."""
    from monai.networks.nets import VQVAE

    ours = recipe.network
    args = dict(args)
    ratio = args.pop("num_res_channels_ratio", None)
    channels = list(args.pop("channels", ours.channels))
    if ratio is not None and "num_res_channels" not in args:
        args["num_res_channels"] = [max(1, int(c * ratio)) for c in channels]
    quantizer = ours.quantizer
    settings = {
        "spatial_dims": ours.spatial_dims,
        "in_channels": ours.in_channels,
        "out_channels": ours.out_channels,
        "channels": channels,
        "num_embeddings": ours.num_embeddings,
        "embedding_dim": ours.embedding_dim,
        "commitment_cost": quantizer.commitment_cost,
        "decay": quantizer.decay if quantizer.decay is not None else 0.99,
        **args,
    }
    for key in ("downsample_parameters", "upsample_parameters"):
        if key in settings:
            settings[key] = [tuple(p) for p in settings[key]][: len(channels)]
    return VQVAE(**settings).to(recipe.device, memory_format=torch.channels_last)


def is_ours(network: torch.nn.Module) -> bool:
    return hasattr(network, "forward_with_details")


class BareTrainer:
    """The VQVAETrainer's iteration as a plain PyTorch loop (no Ignite, no handlers, no events).

    For MONAI's VQVAE, whose forward returns ``(reconstruction, quantization_loss)``, the quantization loss takes
    the place of the commitment term of the same ``VQVAELoss`` (MONAI's EMA quantizer has no codebook loss).

    Args:
        recipe: the recipe (loss, optimizer, precision, clipping, batch preparation).
        network: the network to train (on the recipe's device).
        amp: mixed precision; defaults to the recipe's.
    """

    def __init__(self, recipe: Recipe, network: torch.nn.Module, amp: bool | None = None) -> None:
        from monai_vqbrain.engines import needs_grad_scaler

        self.recipe = recipe
        self.network = network
        self.device = recipe.device
        self.amp = recipe.amp if amp is None else amp
        self.optimizer = recipe.optimizer_cls(network.parameters(), **recipe.optimizer_kwargs)
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, self.amp) else None
        self._zero = torch.zeros((), device=self.device)

    def prepare(self, batch: Any) -> torch.Tensor:
        return self.recipe.prepare_batch(batch, self.device)[0]

    def step(self, images: torch.Tensor) -> torch.Tensor:
        from monai_vqbrain.engines import autocast

        network, optimizer, scaler = self.network, self.optimizer, self.scaler
        network.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            if is_ours(network):
                details = network(images, return_details=True)
                reconstruction, codebook, commitment = details.reconstruction, details.codebook_loss, details.commitment_loss
            else:
                reconstruction, commitment = network(images)
                codebook = self._zero
        total = self.recipe.loss(reconstruction, images, codebook, commitment)["total"]
        (scaler.scale(total) if scaler is not None else total).backward()
        if self.recipe.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), self.recipe.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return total.detach()

    def time_steps(self, batches: Iterator[Any], warmup: int, iters: int, staged: bool = False) -> float:
        """Seconds for ``iters`` steps after ``warmup`` untimed ones; batches are prepared inside the loop
        unless ``staged`` (then ``batches`` yields ready device tensors)."""
        start = 0.0
        for index in range(warmup + iters):
            if index == warmup:
                sync(self.device)
                start = time.perf_counter()
            batch = next(batches)
            self.step(batch if staged else self.prepare(batch))
        sync(self.device)
        return time.perf_counter() - start


def build_bundle_trainer(recipe: Recipe, epoch_length: int, work_dir: Path, extra: dict[str, Any]) -> Any:
    """The config's ``VQVAETrainer`` with every handler of ``train.json``, for one epoch of ``epoch_length``."""
    overrides = {
        **recipe.overrides,
        "bundle_root": str(work_dir),
        "overwrite": True,
        "max_epochs": 1,
        "train#trainer#epoch_length": epoch_length,
        **extra,
    }
    parser = build_parser(overrides, (recipe.train_dataset, recipe.validate_dataset))
    network = parser.get_parsed_content("network")
    # start from the same weights as the bare loops
    getattr(network, "module", network).load_state_dict(recipe.network.state_dict())
    return parser.get_parsed_content("train#trainer")


def time_bundle_trainer(recipe: Recipe, warmup: int, iters: int, work_dir: Path, extra: dict[str, Any]) -> float:
    """Seconds for ``iters`` iterations of the config's ``VQVAETrainer`` with every handler of ``train.json``.

    The trainer runs one epoch of ``warmup + iters`` iterations; the clock starts after iteration ``warmup`` and
    stops after the last one, each time after every other handler of that iteration has run (so the timed span
    covers the per-iteration handlers, not the epoch-end validation and checkpointing).
    """
    from ignite.engine import Events

    trainer = build_bundle_trainer(recipe, warmup + iters, work_dir, extra)
    marks: dict[int, float] = {}

    def mark(engine: Any) -> None:
        if engine.state.iteration in (warmup, warmup + iters):
            sync(recipe.device)
            marks[engine.state.iteration] = time.perf_counter()

    # attached last, so it runs after the config's own ITERATION_COMPLETED handlers
    trainer.add_event_handler(Events.ITERATION_COMPLETED, mark)
    trainer.run()
    return marks[warmup + iters] - marks[warmup]


@contextlib.contextmanager
def recording_host_syncs(records: list[str]) -> Iterator[Callable[[bool], None]]:
    """Collect the CUDA host synchronisations (``torch.cuda.set_sync_debug_mode``) as ``file:line`` of their caller.

    Yields a switch: call it with True to start recording and with False to stop.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def switch(on: bool) -> None:
            torch.cuda.set_sync_debug_mode("warn" if on else "default")

        try:
            yield switch
        finally:
            switch(False)
    records += [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def count_host_syncs(recipe: Recipe, iters: int, work_dir: Path) -> dict[str, Any]:
    """Host synchronisations per training iteration (CUDA only), for the bare loop and the bundle trainer."""
    from collections import Counter

    from ignite.engine import Events

    results: dict[str, Any] = {"iterations": iters}
    bare_records: list[str] = []
    bare = BareTrainer(recipe, copy.deepcopy(recipe.network))
    batches = cycle(recipe.train_loader)
    bare.step(bare.prepare(next(batches)))  # the first step initialises the codebook: not representative
    with recording_host_syncs(bare_records) as switch:
        switch(True)
        for _ in range(iters):
            bare.step(bare.prepare(next(batches)))
    bundle_records: list[str] = []
    trainer = build_bundle_trainer(recipe, 1 + iters, work_dir, {})
    with recording_host_syncs(bundle_records) as switch:
        # record from the end of the first iteration to the end of the last (not the epoch-end handlers)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: switch(e.state.iteration < 1 + iters))
        trainer.run()
    for name, records in (("bare", bare_records), ("bundle", bundle_records)):
        results[name] = {"per_iteration": len(records) / iters, "sites": dict(Counter(records).most_common(20))}
    return results


# ------------------------------------------------------------------------------------------------------ sections
def section_throughput(recipe: Recipe, opts: argparse.Namespace) -> dict[str, Any]:
    """Images/s: bundle trainer vs bare loop vs staged bare loop (ours), and MONAI's VQVAE in the bare loop."""
    images = opts.iters * recipe.batch_size
    runs: dict[str, list[float]] = {"bundle": [], "bare": [], "staged": [], "monai": []}
    if opts.compile:
        runs["bundle_compiled"] = []
    monai_params = count_parameters(build_monai_vqvae(recipe, opts.monai_vqvae))
    # batches already on the device, as many as the timed loop takes
    staged = [recipe.prepare_batch(b, recipe.device)[0] for b in itertools.islice(cycle(recipe.train_loader),
                                                                                  opts.warmup + opts.iters)]
    for repeat in range(opts.repeats):
        # interleaved, so slow drifts of the machine (clock, other load) affect every variant alike
        logger.info(f"throughput: repeat {repeat + 1}/{opts.repeats}")
        bare = BareTrainer(recipe, copy.deepcopy(recipe.network))
        runs["bare"].append(images / bare.time_steps(cycle(recipe.train_loader), opts.warmup, opts.iters))
        runs["bundle"].append(images / time_bundle_trainer(recipe, opts.warmup, opts.iters,
                                                           opts.work_dir / f"bundle_{repeat}", {}))
        bare = BareTrainer(recipe, copy.deepcopy(recipe.network))
        runs["staged"].append(images / bare.time_steps(iter(staged), opts.warmup, opts.iters, staged=True))
        monai_net = BareTrainer(recipe, build_monai_vqvae(recipe, opts.monai_vqvae))
        runs["monai"].append(images / monai_net.time_steps(cycle(recipe.train_loader), opts.warmup, opts.iters))
        if opts.compile:
            runs["bundle_compiled"].append(images / time_bundle_trainer(
                recipe, opts.compile_warmup, opts.iters, opts.work_dir / f"bundle_compiled_{repeat}",
                {"train#trainer#compile": True}))
    rates = {key: statistics.median(values) for key, values in runs.items()}
    result: dict[str, Any] = {
        "images_per_s": rates,
        "all_runs_images_per_s": runs,
        "bundle_overhead": 1.0 - rates["bundle"] / rates["bare"],
        "data_loader_share": 1.0 - rates["bare"] / rates["staged"],
        "ours_vs_monai": rates["bare"] / rates["monai"],
        "parameters": {"ours": count_parameters(recipe.network), "monai": monai_params},
        "iters": opts.iters,
        "warmup": opts.warmup,
        "repeats": opts.repeats,
    }
    if opts.compile:
        result["compiled_speedup"] = rates["bundle_compiled"] / rates["bundle"]
    if recipe.device.type == "cuda":
        try:
            result["host_syncs"] = count_host_syncs(recipe, opts.sync_iters, opts.work_dir / "bundle_syncs")
        except Exception as error:  # a diagnostic: never lose the throughput numbers over it
            result["host_syncs"] = {"error": repr(error)}
    return result


def _precision_child(recipe: Recipe, network: torch.nn.Module, batches: list[torch.Tensor], amp: bool,
                     warmup: int, iters: int, threads: int, max_seconds: float) -> dict[str, Any]:
    """Run in a fresh process: the training loop at one precision; its speed, peak memory and CPU dispatch."""
    torch.set_num_threads(threads)
    device = recipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    network = network.to(device, memory_format=torch.channels_last)
    staged = [b.to(device).contiguous(memory_format=torch.channels_last) for b in batches]
    baseline = current_rss_mib()
    peak_is_training_only = reset_peak_rss()
    trainer = BareTrainer(recipe, network, amp=amp)
    batch_cycle = itertools.cycle(staged)
    for _ in range(warmup):
        trainer.step(next(batch_cycle))
    # at most max_seconds of timed steps (at least one): emulated bf16 can be ~10x slower than fp32
    sync(device)
    start, steps = time.perf_counter(), 0
    while steps < iters and (steps == 0 or time.perf_counter() - start < max_seconds):
        trainer.step(next(batch_cycle))
        sync(device)
        steps += 1
    seconds = time.perf_counter() - start
    result = {
        "images_per_s": steps * staged[0].shape[0] / seconds,
        "timed_iters": steps,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_training_mib": baseline,
        "peak_is_training_only": peak_is_training_only,
        **(cpu_dispatch_info() if device.type == "cpu" else {}),
    }
    if device.type == "cuda":
        result["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def section_precision(recipe: Recipe, opts: argparse.Namespace) -> dict[str, Any]:
    """fp32 vs mixed precision, each network, precision and CPU dispatch level in its own process.

    On the CPU every row runs at the native dispatch and capped to AVX2 (:data:`DISPATCH_ENV`), so a machine with
    native bf16 also shows what a CPU without it gets; ``auto`` is the precision ``amp="auto"`` picks there.
    """
    from monai_vqbrain.engines import autocast_dtype

    # full batches only (an epoch's last batch may be smaller), on the host: the child moves them
    batches = [recipe.prepare_batch(b, "cpu")[0] for b in itertools.islice(cycle(recipe.train_loader), 8)]
    batches = [b.contiguous() for b in batches if b.shape[0] == recipe.batch_size][:4]
    # what the child needs, without the data loaders and with host tensors (plain pickling)
    child_recipe = copy.copy(recipe)
    child_recipe.train_loader = child_recipe.train_dataset = child_recipe.validate_dataset = None
    child_recipe.network = None  # type: ignore[assignment]
    networks = {
        "ours": copy.deepcopy(recipe.network).cpu(),
        "monai": build_monai_vqvae(recipe, opts.monai_vqvae).cpu(),
    }
    context = multiprocessing.get_context("spawn")
    dispatches = opts.dispatch if recipe.device.type == "cpu" else ["native"]
    results: dict[str, Any] = {"mixed_dtype": str(autocast_dtype(recipe.device)).replace("torch.", ""),
                               "dispatches": list(dispatches), "max_seconds": opts.precision_max_seconds}
    for dispatch in dispatches:
        rows: dict[str, Any] = {}
        for name, network in networks.items():
            for amp in (False, True):
                label = f"{name}_{'amp' if amp else 'fp32'}"
                logger.info(f"precision: {label} ({dispatch} dispatch)")
                with dispatch_env(dispatch), context.Pool(1) as pool:
                    rows[label] = pool.apply(_precision_child, (child_recipe, network, batches, amp, opts.warmup,
                                                                opts.iters, torch.get_num_threads(),
                                                                opts.precision_max_seconds))
            rows[f"{name}_amp_speedup"] = rows[f"{name}_amp"]["images_per_s"] / rows[f"{name}_fp32"]["images_per_s"]
            # what amp="auto" picks at this dispatch level: mixed precision only where it is native
            native = recipe.device.type == "cuda" or rows[f"{name}_fp32"].get("native_bf16", False)
            rows[f"{name}_auto"] = "amp" if native else "fp32"
        rows["ours_vs_monai_fp32"] = rows["ours_fp32"]["images_per_s"] / rows["monai_fp32"]["images_per_s"]
        rows["ours_vs_monai_amp"] = rows["ours_amp"]["images_per_s"] / rows["monai_amp"]["images_per_s"]
        rows["ours_auto_vs_monai_fp32"] = (rows[f"ours_{rows['ours_auto']}"]["images_per_s"]
                                           / rows["monai_fp32"]["images_per_s"])
        results[dispatch] = rows
    return results


def validation_ssim(network: torch.nn.Module, images: list[torch.Tensor], inferer: Callable) -> float:
    """Mean SSIM of the reconstructions of the validate split (the bundle's ``val_ssim``)."""
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=2, data_range=1.0)
    network.eval()
    with torch.inference_mode():
        for batch in images:
            metric(inferer(batch, network), batch)
    value = float(metric.aggregate().mean())
    network.train()
    return value


def section_convergence(recipe: Recipe, opts: argparse.Namespace) -> dict[str, Any]:
    """Training seconds to the target validation SSIM, each network under the same wall-clock cap, in each of
    ``--convergence-precisions`` (``auto`` is the recipe's resolved ``amp``)."""
    from monai_vqbrain.engines import ReconstructionInferer, precision_name

    loader = torch.utils.data.DataLoader(recipe.validate_dataset, batch_size=max(recipe.batch_size, 32))
    validation = [recipe.prepare_batch(b, recipe.device)[0] for b in loader]
    results: dict[str, Any] = {"target_ssim": opts.target_ssim, "cap_s": opts.convergence_cap,
                               "eval_every": opts.eval_every, "validate_images": sum(len(b) for b in validation),
                               "precisions": []}
    for setting in opts.convergence_precisions:
        amp = recipe.amp if setting == "auto" else setting == "amp"
        label = precision_name(recipe.device, amp)
        if label in results:
            continue  # "auto" resolved to a precision already measured
        results["precisions"].append(label)
        inferer = ReconstructionInferer(amp=amp)
        rows: dict[str, Any] = {}
        for name, network in (("ours", copy.deepcopy(recipe.network)),
                              ("monai", build_monai_vqvae(recipe, opts.monai_vqvae))):
            logger.info(f"convergence: {name}, {label} (cap {opts.convergence_cap:.0f} s)")
            trainer = BareTrainer(recipe, network, amp=amp)
            batches = cycle(recipe.train_loader)
            train_seconds, steps, best, curve = 0.0, 0, -1.0, []
            reached: dict[str, float] | None = None
            while train_seconds < opts.convergence_cap:
                sync(recipe.device)
                start = time.perf_counter()
                for _ in range(opts.eval_every):
                    trainer.step(trainer.prepare(next(batches)))
                sync(recipe.device)
                train_seconds += time.perf_counter() - start
                steps += opts.eval_every
                ssim = validation_ssim(network, validation, inferer)
                best = max(best, ssim)
                curve.append([steps, round(train_seconds, 3), round(ssim, 5)])
                if ssim >= opts.target_ssim:
                    reached = {"steps": steps, "train_seconds": train_seconds, "images": steps * recipe.batch_size}
                    break
            rows[name] = {"reached": reached, "best_ssim": best, "steps": steps, "train_seconds": train_seconds,
                          "curve": curve}
        if rows["ours"]["reached"]:
            # a lower bound when MONAI's network did not reach the target within the cap
            monai_seconds = (rows["monai"]["reached"] or {}).get("train_seconds", rows["monai"]["train_seconds"])
            rows["monai_over_ours_time"] = monai_seconds / rows["ours"]["reached"]["train_seconds"]
            rows["monai_over_ours_is_lower_bound"] = rows["monai"]["reached"] is None
        results[label] = rows
    return results


def slices_from_volume(volume: torch.Tensor, image_size: int) -> torch.Tensor:
    """Axial slices (last axis) of ``volume`` ``(X, Y, Z)`` as ``(Z, 1, S, S)``: zero-padded square, resized."""
    slices = volume.permute(2, 0, 1).unsqueeze(1)  # (Z, 1, X, Y)
    height, width = slices.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    slices = F.pad(slices, (left, side - width - left, top, side - height - top))
    if side != image_size:
        slices = F.interpolate(slices, size=(image_size, image_size), mode="bilinear", antialias=side > image_size,
                               align_corners=False)
    return slices


def section_inference(recipe: Recipe, opts: argparse.Namespace) -> dict[str, Any]:
    """Reconstruction latency per slice and per synthetic volume (``VQVAE.reconstruct``), fp32 and mixed."""
    from monai_vqbrain.engines import autocast

    device = recipe.device
    network = copy.deepcopy(recipe.network).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(*opts.volume_shape, generator=generator)
    single = torch.rand(1, 1, recipe.image_size, recipe.image_size, generator=generator).to(device)
    single = single.contiguous(memory_format=torch.channels_last)
    results: dict[str, Any] = {"volume_shape": list(opts.volume_shape), "batch_size": opts.inference_batch,
                               "image_size": recipe.image_size}

    def reconstruct_volume(amp: bool) -> torch.Tensor:
        # host volume in, host reconstructions out: what a user of a volume waits for
        slices = slices_from_volume(volume, recipe.image_size)
        outputs = []
        for start in range(0, slices.shape[0], opts.inference_batch):
            batch = slices[start : start + opts.inference_batch].to(device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                outputs.append(network.reconstruct(batch).float().clamp(0, 1).cpu())
        return torch.cat(outputs)

    def timed(function: Callable[[], Any], repeats: int) -> float:
        function()  # warm-up
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            function()
            sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def one_slice(amp: bool) -> None:
        with autocast(device, amp):
            network.reconstruct(single)

    with torch.inference_mode():
        for amp in (False, True):
            label = "amp" if amp else "fp32"
            logger.info(f"inference: {label}")
            per_slice = timed(lambda amp=amp: one_slice(amp), max(5, opts.inference_repeats * 5))
            per_volume = timed(lambda amp=amp: reconstruct_volume(amp), opts.inference_repeats)
            results[label] = {
                "ms_per_slice_batch1": per_slice * 1e3,
                "ms_per_volume": per_volume * 1e3,
                "slices_per_volume": int(opts.volume_shape[2]),
                "ms_per_slice_in_volume": per_volume * 1e3 / opts.volume_shape[2],
            }
    return results


def build_prior(recipe: Recipe, opts: argparse.Namespace) -> torch.nn.Module:
    """The PixelCNN prior: ``prior_def`` of ``train_prior.json`` (with ``--prior-args`` as overrides) when that
    config exists, else ``GatedPixelCNN`` over the recipe's codebook with ``--prior-args``."""
    from monai.bundle import ConfigParser

    from monai_vqbrain.networks.pixelcnn import GatedPixelCNN

    if TRAIN_PRIOR_CONFIG.is_file():
        parser = ConfigParser()
        parser.read_config([str(TRAIN_CONFIG), str(TRAIN_PRIOR_CONFIG)])
        parser.update(recipe.overrides)
        parser.update({f"prior_def#{key}": value for key, value in opts.prior_args.items()})
        prior = parser.get_parsed_content("prior_def")
    else:
        prior = GatedPixelCNN(**{"num_embeddings": recipe.network.num_embeddings, **opts.prior_args})
    return prior.to(recipe.device).eval()


def section_sampling(recipe: Recipe, opts: argparse.Namespace) -> dict[str, Any]:
    """Prior sampling: cached fast path vs naive path (extrapolated on the full grid, measured on a small one)."""
    device = recipe.device
    prior = build_prior(recipe, opts)
    factor = getattr(recipe.network, "downsample_factor", 4)
    grid = (recipe.image_size // factor, recipe.image_size // factor)
    small = (opts.naive_grid, opts.naive_grid)
    batch = opts.sample_batch
    settings = {k: getattr(prior, k) for k in ("num_embeddings", "channels", "num_layers", "kernel_size", "num_classes")}
    # a class-conditioned prior needs a label per sample: cycle through the classes
    labels = None if prior.num_classes is None else torch.arange(batch, device=device) % prior.num_classes

    def position_input(size: tuple[int, int]) -> torch.Tensor | None:
        # the bundle's prior is also conditioned on the code position (Fourier features, 4 channels a frequency)
        if prior.cond_channels is None:
            return None
        from monai_vqbrain.prior.codes import position_map

        return position_map(size, prior.cond_channels // 4).to(device).expand(batch, -1, -1, -1)
    results: dict[str, Any] = {"grid": list(grid), "small_grid": list(small), "num_samples": batch,
                               "prior_parameters": count_parameters(prior), "prior_settings": settings}

    def timed_sample(size: tuple[int, int], fast: bool) -> tuple[float, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(0)
        sync(device)
        start = time.perf_counter()
        codes = prior.sample(batch, size, generator=generator, fast=fast, class_labels=labels,
                             cond_map=position_input(size))
        sync(device)
        return time.perf_counter() - start, codes

    logger.info("sampling: fast path, full grid")
    timed_sample(small, True)  # warm-up
    fast_seconds, _ = timed_sample(grid, True)
    # the naive sampler runs one full forward pass of the whole grid per position: time that pass
    codes = torch.zeros(batch, *grid, dtype=torch.long, device=device)
    grid_position = position_input(grid)
    with torch.no_grad():
        prior(codes, class_labels=labels, cond_map=grid_position)
        sync(device)
        start = time.perf_counter()
        passes = 3
        for _ in range(passes):
            prior(codes, class_labels=labels, cond_map=grid_position)
        sync(device)
    forward_seconds = (time.perf_counter() - start) / passes
    naive_seconds = forward_seconds * grid[0] * grid[1]
    logger.info("sampling: both paths, small grid")
    small_naive, naive_codes = timed_sample(small, False)
    small_fast, fast_codes = timed_sample(small, True)
    results.update(
        fast_samples_per_s=batch / fast_seconds,
        naive_samples_per_s_extrapolated=batch / naive_seconds,
        naive_forward_pass_ms=forward_seconds * 1e3,
        fast_speedup_extrapolated=naive_seconds / fast_seconds,
        small_grid_fast_samples_per_s=batch / small_fast,
        small_grid_naive_samples_per_s=batch / small_naive,
        small_grid_fast_speedup=small_naive / small_fast,
        small_grid_paths_identical=bool(torch.equal(naive_codes, fast_codes)),
    )
    return results


def _bundle_command(run_id: str, configs: list[Path], overrides: dict[str, Any]) -> list[str]:
    """``python -m monai.bundle run <run_id>`` as the README writes it, with ``overrides`` as ``--key value``."""
    config_file = str(configs[0]) if len(configs) == 1 else json.dumps([str(c) for c in configs])
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_file]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return command


def _timed_bundle_run(run_id: str, configs: list[Path], overrides: dict[str, Any], log_file: Path) -> float:
    """Run a bundle workflow in a fresh process (from the repository root, as the README says); its wall clock."""
    start = time.perf_counter()
    with open(log_file, "w") as log:
        result = subprocess.run(_bundle_command(run_id, configs, overrides), cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{run_id} failed with exit code {result.returncode}; see {log_file}")
    return seconds


def section_main_job(recipe: Recipe, opts: argparse.Namespace) -> dict[str, Any]:
    """The README's main job as a new user runs it, at each CPU dispatch level: wall clock and test SSIM.

    ``training`` with the defaults of ``train.json`` into a fresh bundle root (so the demo data is generated, as on
    a first run), then ``evaluating`` (test SSIM) and one epoch of ``training_prior`` (the prior's epoch time).
    Each runs in its own process with the dispatch level's environment (:data:`DISPATCH_ENV`).
    """
    from monai_vqbrain.handlers.training_history import read_history

    dispatches = opts.dispatch if recipe.device.type == "cpu" else ["native"]
    results: dict[str, Any] = {"dispatches": list(dispatches)}
    for dispatch in dispatches:
        root = Path(tempfile.mkdtemp(prefix=f"main_job_{dispatch}_", dir=opts.work_dir))
        overrides: dict[str, Any] = {"bundle_root": str(root), "device": str(recipe.device), "progress": False}
        if opts.quick:
            overrides.update({**QUICK["overrides"], "dataset_dir": recipe.overrides["dataset_dir"], "max_epochs": 1,
                              "image_size": QUICK["image_size"], "batch_size": QUICK["batch_size"]})
        row: dict[str, Any] = {"bundle_root": str(root)}
        with dispatch_env(dispatch):
            # what the workflows' processes dispatch to (the environment takes effect at a process's start)
            probe = "import json, benchmark; print(json.dumps(benchmark.cpu_dispatch_info()))"
            row.update(json.loads(subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parent,
                                                 capture_output=True, text=True, check=True).stdout))
            logger.info(f"main job: training ({dispatch} dispatch) into {root}")
            row["training_s"] = _timed_bundle_run("training", [TRAIN_CONFIG], overrides, root / "training.log")
            history = read_history(root / "models" / "training_history.json")
            row["epochs"] = len(history)
            row["epoch_train_s"] = [round(r.get("epoch_seconds", float("nan")), 2) for r in history]
            row["val_ssim_last"] = history[-1].get("val_ssim") if history else None
            logger.info(f"main job: evaluating ({dispatch} dispatch)")
            row["evaluating_s"] = _timed_bundle_run("evaluating", [TRAIN_CONFIG, CONFIGS / "evaluate.json"],
                                                    overrides, root / "evaluating.log")
            metrics = json.loads((root / "outputs" / "metrics.json").read_text())
            row["test_ssim_mean"] = metrics["ssim_mean"]
            row["test_ssim_min"] = metrics["ssim_min"]
            row["test_psnr_mean"] = metrics["psnr_mean"]
            logger.info(f"main job: one prior epoch ({dispatch} dispatch)")
            row["prior_one_epoch_run_s"] = _timed_bundle_run(
                "training_prior", [TRAIN_CONFIG, TRAIN_PRIOR_CONFIG], {**overrides, "prior_max_epochs": 1},
                root / "training_prior.log")
            prior_history = read_history(root / "models" / "prior_training_history.json")
            row["prior_epoch_train_s"] = prior_history[-1].get("epoch_seconds") if prior_history else None
        results[dispatch] = row
    return results


# --------------------------------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_report(report: dict[str, Any]) -> str:
    """The results as Markdown tables (the layout of ``benchmarks/RESULTS.md``)."""
    lines = ["# monai_vqbrain benchmark results", ""]
    info = report["machine"]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines += ["", f"Command: `{report['command']}`", "", f"Settings: `{json.dumps(report['settings'])}`", ""]
    sections = report["results"]

    if "throughput" in sections:
        t = sections["throughput"]
        r = t["images_per_s"]
        lines += ["## (a) Training throughput", "",
                  f"{t['iters']} timed iterations after {t['warmup']} warm-up, median of {t['repeats']} interleaved "
                  f"repeats; parameters: ours {t['parameters']['ours']:,}, MONAI VQVAE {t['parameters']['monai']:,}.",
                  "", "| variant | images/s | relative to bare loop |", "|---|---:|---:|"]
        names = {"bundle": "ours, `VQVAETrainer` + all train.json handlers", "bare": "ours, bare PyTorch loop",
                 "staged": "ours, bare loop, batches pre-staged on device", "monai": "MONAI `VQVAE`, bare loop",
                 "bundle_compiled": "ours, `VQVAETrainer`, `compile=True`"}
        for key, rate in r.items():
            lines.append(f"| {names[key]} | {rate:.1f} | {rate / r['bare']:.3f} |")
        lines += ["", f"- Bundle/Ignite overhead vs bare loop: **{100 * t['bundle_overhead']:.1f}%** (target < 5%)",
                  f"- Share of the bare loop spent in the data loader: {100 * t['data_loader_share']:.1f}%",
                  f"- Ours / MONAI VQVAE speed: **{t['ours_vs_monai']:.2f}x**"]
        if "compiled_speedup" in t:
            lines.append(f"- `torch.compile` speed-up of the bundle trainer: {t['compiled_speedup']:.2f}x")
        syncs = t.get("host_syncs")
        if syncs and "error" not in syncs:
            lines.append(f"- CUDA host syncs per iteration (over {syncs['iterations']}): bare loop "
                         f"{syncs['bare']['per_iteration']:.1f}, bundle trainer {syncs['bundle']['per_iteration']:.1f}; "
                         f"sites: `{json.dumps(syncs['bundle']['sites'])}`")
        elif syncs:
            lines.append(f"- CUDA host sync count failed: {syncs['error']}")
        lines.append("")

    if "precision" in sections:
        p = sections["precision"]
        lines += ["## (b) fp32 vs mixed precision, per CPU dispatch level", "",
                  f"Mixed precision = autocast to {p['mixed_dtype']}. Each row ran in its own process on pre-staged "
                  "batches (at most "
                  f"{p['max_seconds']:.0f} s of timed steps); peak RSS is measured from just before training (Linux "
                  "`VmHWM` after `clear_refs`) where the kernel allows, else over the process's life. `avx2` rows ran "
                  "with `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`, emulating a CPU without AVX-512 and "
                  "native bf16; `auto` marks the precision `amp: auto` picks there.", ""]
        for dispatch in p["dispatches"]:
            rows = p[dispatch]
            mem_key = "peak_cuda_allocated_mib" if "peak_cuda_allocated_mib" in rows["ours_fp32"] else "peak_rss_mib"
            mem_label = "peak CUDA allocated (MiB)" if mem_key == "peak_cuda_allocated_mib" else "peak RSS (MiB)"
            first = rows["ours_fp32"]
            where = (f"CPU capability {first['cpu_capability']}, native bf16 {first['native_bf16']}"
                     if "cpu_capability" in first else "GPU")
            lines += [f"**{dispatch} dispatch** ({where})", "",
                      f"| network | precision | images/s | timed iterations | {mem_label} | peak - before (MiB) |",
                      "|---|---|---:|---:|---:|---:|"]
            for name in ("ours", "monai"):
                for precision in ("fp32", "amp"):
                    row = rows[f"{name}_{precision}"]
                    growth = row["peak_rss_mib"] - row["rss_before_training_mib"]
                    auto = " (auto)" if rows[f"{name}_auto"] == precision else ""
                    lines.append(f"| {name} | {precision}{auto} | {row['images_per_s']:.1f} | {row['timed_iters']} | "
                                 f"{row[mem_key]:.0f} | {growth:.0f} |")
            lines += ["", f"- Mixed precision vs fp32: ours {rows['ours_amp_speedup']:.2f}x, "
                          f"MONAI {rows['monai_amp_speedup']:.2f}x",
                      f"- Ours / MONAI VQVAE: {rows['ours_vs_monai_fp32']:.2f}x in fp32, "
                      f"{rows['ours_vs_monai_amp']:.2f}x in mixed precision; ours with `amp: auto` / MONAI in fp32: "
                      f"**{rows['ours_auto_vs_monai_fp32']:.2f}x**", ""]

    if "convergence" in sections:
        c = sections["convergence"]
        lines += ["## (c) Time to validation SSIM " + _fmt(c["target_ssim"], 2), "",
                  f"Cap {c['cap_s']:.0f} s of training per network and precision; SSIM on {c['validate_images']} "
                  f"validate images every {c['eval_every']} steps (evaluation time not counted); both networks "
                  "train on the recipe's batches (random crops when `train_crop_size` is set).", "",
                  "| precision | network | reached | training s | steps | best SSIM |", "|---|---|---|---:|---:|---:|"]
        for precision in c["precisions"]:
            rows = c[precision]
            for name in ("ours", "monai"):
                row = rows[name]
                if row["reached"]:
                    lines.append(f"| {precision} | {name} | yes | {row['reached']['train_seconds']:.1f} | "
                                 f"{row['reached']['steps']} | {row['best_ssim']:.4f} |")
                else:
                    lines.append(f"| {precision} | {name} | **not reached within cap** | {row['train_seconds']:.1f} | "
                                 f"{row['steps']} | {row['best_ssim']:.4f} |")
        lines.append("")
        for precision in c["precisions"]:
            rows = c[precision]
            if "monai_over_ours_time" in rows:
                bound = ">= " if rows["monai_over_ours_is_lower_bound"] else ""
                lines.append(f"- {precision}: MONAI / ours time to SSIM {c['target_ssim']}: "
                             f"**{bound}{rows['monai_over_ours_time']:.2f}x**")
            else:
                lines.append(f"- {precision}: ours did not reach the target within the cap")
        lines.append("")

    if "inference" in sections:
        i = sections["inference"]
        lines += ["## (d) Inference latency (`VQVAE.reconstruct`)", "",
                  f"Volume {'x'.join(map(str, i['volume_shape']))} sliced axially, padded square, resized to "
                  f"{i['image_size']}, batches of {i['batch_size']}; host to host.", "",
                  "| precision | ms / slice (batch 1) | ms / volume | ms / slice within volume |", "|---|---:|---:|---:|"]
        for precision in ("fp32", "amp"):
            row = i[precision]
            lines.append(f"| {precision} | {row['ms_per_slice_batch1']:.2f} | {row['ms_per_volume']:.1f} | "
                         f"{row['ms_per_slice_in_volume']:.2f} |")
        lines.append("")

    if "sampling" in sections:
        s = sections["sampling"]
        grid = "x".join(map(str, s["grid"]))
        small = "x".join(map(str, s["small_grid"]))
        lines += ["## (e) Prior sampling (`GatedPixelCNN.sample`)", "",
                  f"{s['num_samples']} samples per call; prior {s['prior_parameters']:,} parameters "
                  f"(`{json.dumps(s['prior_settings'])}`).", "",
                  "| path | grid | samples/s | how |", "|---|---|---:|---|",
                  f"| fast (cached) | {grid} | {s['fast_samples_per_s']:.3g} | measured |",
                  f"| naive | {grid} | {s['naive_samples_per_s_extrapolated']:.3g} | **extrapolated**: {grid} full "
                  f"forward passes of {s['naive_forward_pass_ms']:.1f} ms |",
                  f"| fast (cached) | {small} | {s['small_grid_fast_samples_per_s']:.3g} | measured |",
                  f"| naive | {small} | {s['small_grid_naive_samples_per_s']:.3g} | measured |",
                  "", f"- Fast-path speed-up: {s['fast_speedup_extrapolated']:.0f}x on {grid} (extrapolated), "
                      f"{s['small_grid_fast_speedup']:.1f}x on {small} (measured)",
                  f"- Both paths drew identical codes on {small}: {s['small_grid_paths_identical']}", ""]
    if "main_job" in sections:
        m = sections["main_job"]
        lines += ["## (f) The README's main job", "",
                  "`training` with train.json's defaults into a fresh bundle root (demo data generated, as on a first "
                  "run), then `evaluating` on the test split and one epoch of `training_prior`, each a fresh process, "
                  "wall clock.", "",
                  "| dispatch | CPU capability | native bf16 | training (s) | epochs | s / epoch (training only) | "
                  "test SSIM (min) | evaluating (s) | prior epoch (s) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for dispatch in m["dispatches"]:
            row = m[dispatch]
            epoch_s = statistics.median(row["epoch_train_s"]) if row["epoch_train_s"] else float("nan")
            lines.append(f"| {dispatch} | {row.get('cpu_capability', 'n/a')} | {row.get('native_bf16', 'n/a')} | "
                         f"{row['training_s']:.0f} | {row['epochs']} | {epoch_s:.1f} | {row['test_ssim_mean']:.4f} "
                         f"({row['test_ssim_min']:.3f}) | {row['evaluating_s']:.0f} | "
                         f"{_fmt(row['prior_epoch_train_s'])} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="what to measure")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes everywhere: a smoke run, not a benchmark")
    parser.add_argument("--data-dir", default=None, help="a dataset folder to use instead of the demo data")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="a new folder is made in it for the run's demo data, checkpoints and logs")
    parser.add_argument("--keep-work-dir", "--keep_work_dir", action="store_true",
                        help="keep the run's work folder (default: removed when the run ends)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "latest",
                        help=f"folder to write {REPORT_JSON} and {REPORT_MARKDOWN} into")
    parser.add_argument("--image-size", type=int, default=None, help="training image side; None keeps train.json's")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size; None keeps train.json's")
    parser.add_argument("--demo-cases", type=int, nargs=3, default=[32, 4, 4], help="demo cases (train, val, test)")
    parser.add_argument("--demo-slices", type=int, default=16, help="demo slices per case")
    parser.add_argument("--demo-size", type=int, default=256, help="side of the demo PNG slices")
    parser.add_argument("--iters", type=int, default=50, help="timed training iterations per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the throughput variants")
    parser.add_argument("--compile", action="store_true", help="also time the bundle trainer with torch.compile")
    parser.add_argument("--compile-warmup", type=int, default=10, help="warm-up iterations of the compiled run")
    parser.add_argument("--sync-iters", type=int, default=20, help="iterations over which CUDA host syncs are counted")
    parser.add_argument("--convergence-cap", type=float, default=360.0, help="training seconds cap per network")
    parser.add_argument("--convergence-precisions", nargs="+", default=["fp32", "amp"], choices=["auto", "fp32", "amp"],
                        help="precisions of the convergence section (auto: the recipe's resolved amp)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation SSIM evaluations")
    parser.add_argument("--target-ssim", type=float, default=0.95, help="validation SSIM to reach")
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[176, 208, 176], help="synthetic volume")
    parser.add_argument("--inference-batch", type=int, default=32, help="slices per inference batch")
    parser.add_argument("--inference-repeats", type=int, default=5, help="timed volume reconstructions")
    parser.add_argument("--sample-batch", type=int, default=16, help="samples per prior sampling call")
    parser.add_argument("--naive-grid", type=int, default=8, help="grid side where the naive sampler runs fully")
    parser.add_argument("--prior-args", type=json.loads, default={},
                        help="overrides of train_prior.json's prior_def (JSON), e.g. '{\"channels\": 32}'")
    parser.add_argument("--monai-vqvae", type=json.loads, default=MONAI_VQVAE_ARGS,
                        help="monai.networks.nets.VQVAE arguments (JSON) besides those taken from the recipe")
    parser.add_argument("--override", action="append", default=[], metavar="ID=JSON",
                        help="train.json override, e.g. amp=false or network_def#channels=[32,64] (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dispatch", nargs="+", default=list(DISPATCH_ENV), choices=list(DISPATCH_ENV),
                        help="CPU dispatch levels of the precision and main_job sections (avx2 caps oneDNN/ATen)")
    parser.add_argument("--precision-max-seconds", type=float, default=60.0,
                        help="at most this many seconds of timed steps per precision row (emulated bf16 is slow)")
    opts = parser.parse_args(argv)
    if opts.quick:
        # only the settings left at their defaults are made tiny
        for key, value in QUICK.items():
            if key == "overrides":
                continue
            if getattr(opts, key) == parser.get_default(key):
                setattr(opts, key, value)
    if opts.warmup < 1 or opts.iters < 1:
        parser.error("--warmup and --iters must be at least 1")
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark: parse ``argv``, measure in a work folder of its own, write the report into ``--output``.

    Args:
        argv: the command line's arguments; ``sys.argv[1:]`` when None.

    Returns:
        The report (also written as ``<output>/benchmark.json`` and ``benchmark.md``).
    """
    opts = parse_args(argv)
    logging.config.fileConfig(CONFIGS / "logging.conf", disable_existing_loggers=False)
    if opts.output.exists() and not opts.output.is_dir():
        raise SystemExit(f"error: --output '{opts.output}' is a file; it names the folder the report goes into")
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    # a folder of this run's own, the only one it removes: a --work-dir given may hold anything else
    opts.work_dir = Path(tempfile.mkdtemp(prefix="monai_vqbrain_benchmark_", dir=opts.work_dir))
    try:
        return _measure(opts, argv)
    finally:
        if opts.keep_work_dir:
            logger.info(f"kept the work folder {opts.work_dir}")
        else:
            shutil.rmtree(opts.work_dir, ignore_errors=True)


def _measure(opts: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from monai.utils import set_determinism

    from monai_vqbrain.data import ensure_demo_dataset
    from monai_vqbrain.engines import resolve_device

    device = resolve_device(opts.device)
    set_determinism(seed=0)
    if opts.data_dir is None:
        suffix = f"{opts.demo_size}_{'-'.join(map(str, opts.demo_cases))}_{opts.demo_slices}"
        data_dir = ensure_demo_dataset(opts.work_dir / f"demo_oasis_{suffix}", num_cases=tuple(opts.demo_cases),
                                       slices_per_case=opts.demo_slices, image_size=opts.demo_size)
    else:
        data_dir = Path(opts.data_dir)
    overrides: dict[str, Any] = {
        "bundle_root": str(opts.work_dir / "bundle"),
        "dataset_dir": str(data_dir),
        "device": str(device),
        "overwrite": True,
    }
    if opts.quick:
        overrides.update(QUICK["overrides"])
    if opts.image_size is not None:
        overrides["image_size"] = opts.image_size
    if opts.batch_size is not None:
        overrides["batch_size"] = opts.batch_size
    for item in opts.override:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    recipe = build_recipe(overrides)
    logger.info(f"benchmark on {device}: {len(recipe.train_dataset)} train images of {recipe.image_size}px, "
                f"batch {recipe.batch_size}, amp={recipe.amp}")

    functions = {"throughput": section_throughput, "precision": section_precision,
                 "convergence": section_convergence, "inference": section_inference, "sampling": section_sampling,
                 "main_job": section_main_job}
    results: dict[str, Any] = {}
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(opts).items()}
    report = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": machine_info(device),
        "settings": {**settings, "config_overrides": overrides, "train_images": len(recipe.train_dataset)},
        "results": results,
    }
    opts.output.mkdir(parents=True, exist_ok=True)
    json_file, markdown_file = opts.output / REPORT_JSON, opts.output / REPORT_MARKDOWN
    for name in SECTIONS:
        if name in opts.sections:
            start = time.perf_counter()
            results[name] = functions[name](recipe, opts)
            results[name]["section_seconds"] = time.perf_counter() - start
            # write after every section, so a failure late in a long run keeps what was measured
            json_file.write_text(json.dumps(report, indent=1) + "\n")
            markdown_file.write_text(markdown_report(report) + "\n")
    logger.info(f"wrote {json_file} and {markdown_file}")
    return report


if __name__ == "__main__":
    main()
