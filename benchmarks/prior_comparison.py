"""Our Gated PixelCNN prior against MONAI's ``DecoderOnlyTransformer`` prior, on the same cached codes and budget.

Both priors are trained from scratch, one after the other on the same machine, for the same wall-clock budget, on the
code maps that the bundle's ``training_prior`` cached (``<ckpt_dir>/codes_{train,validate}.pt``) for the trained
VQ-VAE ``<ckpt_dir>/model.pt``. Run the bundle's ``training`` and ``training_prior`` first (any number of prior
epochs: only the code caches are used).

* ours: ``prior_def`` of ``bundle/configs/train_prior.json`` as is (the default recipe, slice-position conditioned),
  trained with its batch size, learning rate and precision (``amp: auto``).
* MONAI: ``monai.networks.nets.DecoderOnlyTransformer`` over the codes in raster order (MONAI's ``Ordering``,
  ``raster_scan``), given the same conditioning: the sequence starts with a token that names the slice-position bin
  (``num_embeddings + bin``), and sampled with MONAI's ``VQVAETransformerInferer.sample``.

Both use Adam with a cosine decay over the time budget (to 2% of the learning rate), bf16 autocast where the CPU
runs it natively, and are measured by: validation bits per code (teacher forced, the validate split), sampling
seconds per sample, the classifier two-sample AUC of their samples against the real test split
(:func:`monai_vqbrain.prior.realism.classifier_two_sample_test`, 0.5 = indistinguishable), and parameters.

Run ``python benchmarks/prior_comparison.py --bundle_root <root> --budget 300``; results go to
``benchmarks/results/prior_comparison.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"


def load_recipe(bundle_root: Path, demo_dir: str | None) -> Any:
    """The bundle's train + train_prior configs, parsed with ``bundle_root`` (and ``demo_dir``) set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_prior.json")])
    parser["bundle_root"] = str(bundle_root)
    if demo_dir:
        parser["demo_dir"] = demo_dir
    parser["progress"] = False
    return parser


class Recipe(NamedTuple):
    """What the prior benchmarks read from the bundle's recipe: the run, the cached codes and the real test slices."""

    device: torch.device
    amp: bool
    vqvae: torch.nn.Module
    codes: dict[str, Any]
    labels: Any
    batch_size: int
    base_lr: float
    frequencies: int
    code_size: tuple[int, ...]
    num_classes: int
    test_images: torch.Tensor


def read_recipe(parser: Any) -> Recipe:
    """The :class:`Recipe` of a parsed train + train_prior config (see :func:`load_recipe`)."""
    from monai_vqbrain.data import get_dataset
    from monai_vqbrain.engines import resolve_amp

    device = parser.get_parsed_content("run_device")
    codes = parser.get_parsed_content("prior_codes")
    labels = parser.get_parsed_content("prior_labels")
    dataset_kwargs = parser.get_parsed_content("dataset_kwargs")
    image_size = int(parser.get_parsed_content("image_size"))
    test = get_dataset(split="test", **{**dataset_kwargs, "image_size": image_size, "cache_rate": 0.0})
    return Recipe(
        device=device,
        amp=resolve_amp("auto", device, log=True),
        vqvae=parser.get_parsed_content("vqvae").eval(),
        codes=codes,
        labels=labels,
        batch_size=int(parser.get_parsed_content("prior_batch_size")),
        base_lr=float(parser.get_parsed_content("prior_learning_rate")),
        frequencies=int(parser.get_parsed_content("prior_position_frequencies")),
        code_size=tuple(int(s) for s in codes["train"]["code_size"]),
        num_classes=int(labels.num_classes or 1) if labels is not None else 1,
        test_images=torch.stack([torch.as_tensor(test[i]["image"]).float() for i in range(len(test))]),
    )


def machine_report(device: torch.device, amp: bool) -> dict[str, Any]:
    """The machine a benchmark ran on, for its report."""
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(), "device": str(device),
            "precision": "bf16" if amp else "fp32", "torch": torch.__version__}


def cosine_lr(optimizer: torch.optim.Optimizer, base_lr: float, fraction: float) -> None:
    """Set the learning rate of a cosine decay to 2% of ``base_lr`` at ``fraction`` of the budget."""
    low = 0.02 * base_lr
    lr = low + 0.5 * (base_lr - low) * (1 + math.cos(math.pi * min(fraction, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = lr


class TransformerPrior(torch.nn.Module):
    """MONAI's ``DecoderOnlyTransformer`` over raster-ordered code maps, the first token naming the condition.

    Args:
        num_embeddings: codebook size of the VQ-VAE.
        code_size: ``(h, w)`` of the code maps.
        num_classes: slice-position bins (1: unconditioned).
        dim, depth, heads: the transformer's width, layers and attention heads.
    """

    def __init__(self, num_embeddings: int, code_size: tuple[int, int], num_classes: int, dim: int, depth: int,
                 heads: int) -> None:
        super().__init__()
        from monai.networks.nets import DecoderOnlyTransformer
        from monai.utils.ordering import Ordering, OrderingType

        self.num_embeddings = num_embeddings
        self.code_size = code_size
        self.ordering = Ordering(ordering_type=OrderingType.RASTER_SCAN.value, spatial_dims=2,
                                 dimensions=(1, *code_size))
        self.transformer = DecoderOnlyTransformer(
            num_tokens=num_embeddings + max(num_classes, 1),
            max_seq_len=code_size[0] * code_size[1] + 1,
            attn_layers_dim=dim,
            attn_layers_depth=depth,
            attn_layers_heads=heads,
            use_flash_attention=True,  # PyTorch's fused attention: the same result, far less memory on CPU
        )

    def sequences(self, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``(B, 1 + h*w)`` token sequences: the condition token, then the codes in MONAI's raster ordering."""
        flat = codes.flatten(1)[:, self.ordering.get_sequence_ordering()]
        start = torch.full((len(codes), 1), self.num_embeddings, dtype=torch.long, device=codes.device)
        if labels is not None:
            start = start + labels.long()[:, None]
        return torch.cat([start, flat.long()], dim=1)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_embeddings, h*w)`` of each code given those before it (in raster order)."""
        logits = self.transformer(self.sequences(codes, labels)[:, :-1])
        return logits[..., : self.num_embeddings].transpose(1, 2)

    def targets(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.flatten(1)[:, self.ordering.get_sequence_ordering()].long()


class _CodesOnly(torch.nn.Module):
    """The transformer as the sampler sees it: the condition tokens (never a next code) get no probability.

    ``VQVAETransformerInferer.sample`` zeroes only the token ``num_embeddings`` (its start token); the other condition
    tokens are never targets in training, yet they keep a small probability that would be sampled now and then.
    """

    def __init__(self, transformer: torch.nn.Module, num_embeddings: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_embeddings = num_embeddings
        self.max_seq_len = transformer.max_seq_len

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.transformer(x=x, context=context)
        logits[..., self.num_embeddings + 1 :] = float("-inf")
        return logits


class _CodeDecoder:
    """The VQ-VAE as ``VQVAETransformerInferer.sample`` expects it (``num_embeddings``, ``decode_samples``)."""

    def __init__(self, vqvae: torch.nn.Module) -> None:
        self.vqvae = vqvae
        self.num_embeddings = int(vqvae.num_embeddings)

    def decode_samples(self, codes: torch.Tensor) -> torch.Tensor:
        from monai_vqbrain.prior import decode_codes

        return decode_codes(self.vqvae, codes)


def training_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, logits_fn):
    """One optimisation step of a prior (cross-entropy of its float32 logits, gradients clipped to norm 1) as a
    function of a batch, returning the loss in nats: the same step for both priors."""

    def step(batch) -> float:
        network.train()
        logits, target = logits_fn(batch)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return step


def train_for(budget: float, step, optimizer: torch.optim.Optimizer, base_lr: float, batches) -> dict[str, Any]:
    """Run ``step(batch)`` over ``batches`` (cycled) until ``budget`` seconds have passed."""
    start = time.perf_counter()
    steps, losses = 0, []
    while True:
        for batch in batches:
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                return {"steps": steps, "seconds": elapsed, "final_train_bits": sum(losses[-20:]) / max(len(losses[-20:]), 1)}
            cosine_lr(optimizer, base_lr, elapsed / budget)
            losses.append(step(batch) / math.log(2))
            steps += 1


@torch.no_grad()
def bits_per_code(logits_fn, batches) -> float:
    total, count = 0.0, 0
    for batch in batches:
        logits, targets = logits_fn(batch)
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        count += targets.numel()
    return total / count / math.log(2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--bundle_root", type=Path, required=True)
    args.add_argument("--demo_dir", default=None)
    args.add_argument("--budget", type=float, default=300.0, help="training seconds per prior")
    args.add_argument("--num_samples", type=int, default=256, help="samples per prior for the classifier test")
    args.add_argument("--monai_samples", type=int, default=16,
                      help="samples of MONAI's prior: its sampler reruns the whole sequence for every code (no cache), "
                      "so on a CPU a few samples give its time per sample; the classifier AUC needs at least 10")
    args.add_argument("--monai_dim", type=int, default=96)
    args.add_argument("--monai_depth", type=int, default=4)
    args.add_argument("--monai_heads", type=int, default=4)
    args.add_argument("--monai_batch_size", type=int, default=None, help="default: the recipe's prior_batch_size")
    args.add_argument("--monai_lr", type=float, default=5e-4)
    args.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "prior_comparison")
    opts = args.parse_args(argv)

    from monai.inferers import VQVAETransformerInferer
    from torch.utils.data import DataLoader

    from monai_vqbrain.engines import autocast
    from monai_vqbrain.prior import CodeDataset, decode_codes, position_map
    from monai_vqbrain.prior.realism import classifier_two_sample_test

    parser = load_recipe(opts.bundle_root.resolve(), opts.demo_dir)
    (device, amp, vqvae, codes, labels, batch_size, base_lr, frequencies, code_size, num_classes,
     test_images) = read_recipe(parser)
    train_loader = DataLoader(CodeDataset(codes["train"], labels), batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(CodeDataset(codes["validate"], labels), batch_size=64, shuffle=False)
    sample_labels = labels.sample_labels(opts.num_samples) if labels is not None else None
    report: dict[str, Any] = {
        "machine": machine_report(device, amp),
        "budget_seconds": opts.budget, "num_train": len(train_loader.dataset), "num_validate": len(val_loader.dataset),
        "num_test": len(test_images), "code_size": list(code_size),
    }

    def to_device(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        label = batch.get("label")
        return batch["codes"].to(device), None if label is None else label.to(device)

    # ---------------------------------------------------------------------------------------------- ours
    torch.manual_seed(0)
    ours = parser.get_parsed_content("prior_def", instantiate=True).to(device)
    ours_optimizer = torch.optim.Adam(ours.parameters(), lr=base_lr)
    cond = position_map(code_size, frequencies).to(device) if frequencies > 0 else None

    def ours_logits(batch):
        x, y = to_device(batch)
        kwargs = {"class_labels": y} if y is not None else {}
        if cond is not None:
            kwargs["cond_map"] = cond.expand(len(x), -1, -1, -1)
        with autocast(device, amp):
            return ours(x, **kwargs), x

    ours_step = training_step(ours, ours_optimizer, ours_logits)
    training = train_for(opts.budget, ours_step, ours_optimizer, base_lr, train_loader)
    ours.eval()
    val_bits = bits_per_code(ours_logits, val_loader)
    start = time.perf_counter()
    sampled = ours.sample(opts.num_samples, code_size, generator=torch.Generator().manual_seed(0),
                          class_labels=sample_labels,
                          cond_map=None if cond is None else cond.expand(opts.num_samples, -1, -1, -1))
    ours_images = decode_codes(vqvae, sampled).float().cpu()
    seconds = time.perf_counter() - start
    report["ours"] = {"parameters": sum(p.numel() for p in ours.parameters()), **training, "val_bits_per_code": val_bits,
                      "sampling_seconds_per_sample": seconds / opts.num_samples, "num_samples": opts.num_samples}
    print(json.dumps(report["ours"]), flush=True)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))

    # ---------------------------------------------------------------------------------------------- MONAI
    torch.manual_seed(0)
    monai_prior = TransformerPrior(int(vqvae.num_embeddings), code_size, num_classes, opts.monai_dim,
                                   opts.monai_depth, opts.monai_heads).to(device)
    monai_optimizer = torch.optim.Adam(monai_prior.parameters(), lr=opts.monai_lr)
    monai_loader = DataLoader(train_loader.dataset, batch_size=opts.monai_batch_size or batch_size, shuffle=True,
                              drop_last=True)

    def monai_logits(batch):
        x, y = to_device(batch)
        with autocast(device, amp):
            return monai_prior(x, y), monai_prior.targets(x)

    monai_step = training_step(monai_prior, monai_optimizer, monai_logits)
    training = train_for(opts.budget, monai_step, monai_optimizer, opts.monai_lr, monai_loader)
    monai_prior.eval()
    val_bits = bits_per_code(monai_logits, val_loader)
    monai_count = int(opts.monai_samples)
    start_tokens = torch.full((monai_count, 1), int(vqvae.num_embeddings), dtype=torch.long, device=device)
    if sample_labels is not None:
        start_tokens = start_tokens + sample_labels[:monai_count, None].to(device)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        monai_images = VQVAETransformerInferer().sample(
            latent_spatial_dim=code_size, starting_tokens=start_tokens, vqvae_model=_CodeDecoder(vqvae),
            transformer_model=_CodesOnly(monai_prior.transformer, int(vqvae.num_embeddings)),
            ordering=monai_prior.ordering, verbose=False,
        ).float().cpu()
    seconds = time.perf_counter() - start
    report["monai_transformer"] = {
        "parameters": sum(p.numel() for p in monai_prior.parameters()), **training, "val_bits_per_code": val_bits,
        "sampling_seconds_per_sample": seconds / monai_count, "num_samples": monai_count,
        "settings": {"dim": opts.monai_dim, "depth": opts.monai_depth, "heads": opts.monai_heads,
                     "lr": opts.monai_lr, "batch_size": opts.monai_batch_size or batch_size},
    }
    print(json.dumps(report["monai_transformer"]), flush=True)

    # ------------------------------------------------------------------------------------ classifier AUC
    for key, images in (("ours", ours_images), ("monai_transformer", monai_images)):
        if len(images) < 10:  # 5 folds need two images a side per fold
            report[key]["classifier_auc_vs_test"] = None
            report[key]["classifier_note"] = f"not measured: {len(images)} samples (at least 10 needed for 5 folds)"
            continue
        result = classifier_two_sample_test(images.clamp(0, 1), test_images, seed=0)
        report[key]["classifier_auc_vs_test"] = result
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
