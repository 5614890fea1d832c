"""Which lever moves the realism of the prior's samples? Three priors trained for the same number of steps.

Issue 10 asks for generated slices that a classifier cannot tell from real ones (held-out AUC <= 0.70) with a prior
that trains in minutes on a CPU. This benchmark measures candidate levers side by side on the code maps that the
bundle's ``training_prior`` cached for a trained VQ-VAE (run ``training`` and ``training_prior`` first):

* ``baseline``: ``prior_def`` of ``bundle/configs/train_prior.json`` as is (the default recipe).
* ``layout_oracle``: the same prior also conditioned on a coarse layout of the slice: the decoded image averaged over
  ``cell x cell`` pixels and quantised to ``levels`` intensity levels, seen through a small non-causal convolution
  stack (as the bottom prior of a two-level code would see its top level, VQ-VAE-2 style). The samples are drawn
  given the layouts of real *training* slices, so this is an upper bound for a two-level prior whose top prior
  were perfect.
* ``masked``: a bidirectional masked-code prior (MaskGIT-style): a dilated residual CNN predicts masked codes from
  all unmasked ones; sampling unmasks the most confident codes over ``--masked_steps`` iterations. It has no exact
  likelihood: its "bits per code" is the cross-entropy on randomly masked validation codes, not comparable with
  the autoregressive priors'.

Every prior gets the recipe's batch size and learning rate schedule (Adam, cosine decay over the run), the same
number of optimisation steps (``--steps``; equal steps rather than equal seconds, so the comparison does not depend on
what else the machine runs), bf16 autocast where the CPU runs it natively, and the same measurement: the classifier
two-sample AUC of ``--num_samples`` decoded samples against the real test split
(:func:`monai_vqbrain.prior.realism.classifier_two_sample_test`, 0.5 = indistinguishable).

Run ``python benchmarks/prior_levers.py --bundle_root <root> --variants baseline layout_oracle masked``; results go to
``benchmarks/results/prior_levers.json``. A VQ-VAE trained with other settings needs the same overrides here, e.g.
``--set network_def#num_embeddings=64``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_comparison import (  # noqa: E402
    REPO_ROOT,
    bits_per_code,
    cosine_lr,
    load_recipe,
    machine_report,
    read_recipe,
    training_step,
)


def train_steps(steps: int, step, optimizer: torch.optim.Optimizer, base_lr: float, batches) -> dict[str, Any]:
    """Run ``step(batch)`` for ``steps`` optimisation steps over ``batches`` (cycled), with a cosine decay to 2%."""
    start, done, losses = time.perf_counter(), 0, []
    while done < steps:
        for batch in batches:
            if done >= steps:
                break
            cosine_lr(optimizer, base_lr, done / steps)
            losses.append(step(batch) / math.log(2))
            done += 1
    return {"steps": done, "seconds": time.perf_counter() - start, "final_train_bits": sum(losses[-20:]) / len(losses[-20:])}


def image_layout(images: torch.Tensor, cell: int, levels: int) -> torch.Tensor:
    """``(N, 1, S, S)`` images in [0, 1] -> ``(N, S / cell, S / cell)`` intensity levels in ``[0, levels)``."""
    low = F.avg_pool2d(images.float(), cell)[:, 0]
    return (low * (levels - 1)).round().clamp(0, levels - 1).long()


class LayoutEncoder(nn.Module):
    """One-hot layout -> non-causal 3x3 convolutions -> features at the code map's size."""

    def __init__(self, levels: int, out_channels: int, code_size: tuple[int, int]) -> None:
        super().__init__()
        self.levels, self.code_size = levels, code_size
        self.net = nn.Sequential(
            nn.Conv2d(levels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, out_channels, 3, padding=1),
        )

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        features = self.net(F.one_hot(layout, self.levels).permute(0, 3, 1, 2).float())
        return F.interpolate(features, size=self.code_size, mode="nearest")


class MaskedCodePrior(nn.Module):
    """Bidirectional masked-code prior: code embeddings (+ a mask token) -> dilated residual blocks -> logits."""

    def __init__(self, num_embeddings: int, num_classes: int, position: torch.Tensor, channels: int = 96,
                 num_blocks: int = 8) -> None:
        super().__init__()
        self.mask_token = num_embeddings
        self.embedding = nn.Embedding(num_embeddings + 1, channels)
        self.register_buffer("position", position)
        self.position_proj = nn.Conv2d(position.shape[0], channels, 1)
        self.blocks = nn.ModuleList()
        for i in range(num_blocks):
            dilation = 2 ** (i % 4)
            self.blocks.append(nn.ModuleDict({
                "norm1": nn.GroupNorm(8, channels), "conv1": nn.Conv2d(channels, channels, 3, padding=dilation,
                                                                        dilation=dilation),
                "label": nn.Embedding(num_classes, channels), "norm2": nn.GroupNorm(8, channels),
                "conv2": nn.Conv2d(channels, channels, 3, padding=1),
            }))
        self.head = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, num_embeddings, 1))

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.embedding(codes).permute(0, 3, 1, 2) + self.position_proj(self.position[None])
        for block in self.blocks:
            h = block["conv1"](F.silu(block["norm1"](x))) + block["label"](labels)[:, :, None, None]
            x = x + block["conv2"](F.silu(block["norm2"](h)))
        return self.head(x)

    def mask(self, codes: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a cosine-distributed fraction of each map's codes; return the input and the mask."""
        ratio = torch.cos(torch.rand(len(codes), generator=generator) * math.pi / 2).clamp(min=1.0 / codes[0].numel())
        masked = torch.rand(codes.shape, generator=generator) < ratio[:, None, None]
        return torch.where(masked, torch.full_like(codes, self.mask_token), codes), masked

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, code_size: tuple[int, int], iterations: int,
               generator: torch.Generator, precision) -> torch.Tensor:
        """Iterative decoding: draw every masked code, keep the most confident (cosine schedule), re-mask the rest.

        The noise is drawn on the CPU from ``generator``; ``precision`` returns the autocast context of a forward.
        """
        num, positions = len(labels), code_size[0] * code_size[1]
        codes = torch.full((num, *code_size), self.mask_token, dtype=torch.long, device=labels.device)
        for t in range(iterations):
            with precision():
                logits = self(codes, labels).float().cpu()
            codes = codes.cpu()
            masked = codes == self.mask_token
            gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator).clamp_min(1e-20)))
            drawn = (logits + gumbel).argmax(1)
            confidence = torch.log_softmax(logits, 1).gather(1, drawn[:, None])[:, 0]
            # annealed noise on the confidences, as in MaskGIT, so that early choices are not all in one region
            noise = -torch.log(-torch.log(torch.rand(confidence.shape, generator=generator).clamp_min(1e-20)))
            confidence = confidence + 4.5 * (1 - (t + 1) / iterations) * noise
            confidence = torch.where(masked, confidence, torch.full_like(confidence, float("inf")))
            still_masked = int(math.floor(positions * math.cos(math.pi / 2 * (t + 1) / iterations)))
            codes = torch.where(masked, drawn, codes).view(num, -1)
            if still_masked > 0:
                remask = confidence.view(num, -1).topk(still_masked, dim=1, largest=False).indices
                codes.scatter_(1, remask, self.mask_token)
            codes = codes.view(num, *code_size).to(labels.device)
        return codes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--bundle_root", type=Path, required=True)
    args.add_argument("--demo_dir", default=None)
    args.add_argument("--variants", nargs="+", default=["baseline", "layout_oracle", "masked"],
                      choices=["baseline", "layout_oracle", "masked"])
    args.add_argument("--steps", type=int, default=600, help="optimisation steps per prior")
    args.add_argument("--num_samples", type=int, default=256)
    args.add_argument("--layout_cell", type=int, default=8)
    args.add_argument("--layout_levels", type=int, default=8)
    args.add_argument("--masked_steps", type=int, default=12, help="decoding iterations of the masked prior")
    args.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="recipe overrides")
    args.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "prior_levers.json")
    opts = args.parse_args(argv)

    from torch.utils.data import DataLoader

    from monai_vqbrain.engines import autocast
    from monai_vqbrain.prior import CodeDataset, decode_codes, position_map
    from monai_vqbrain.prior.realism import classifier_two_sample_test

    parser = load_recipe(opts.bundle_root.resolve(), opts.demo_dir)
    for item in opts.set:
        key, value = item.split("=", 1)
        parser[key] = json.loads(value)
    (device, amp, vqvae, codes, labels, batch_size, base_lr, frequencies, code_size, num_classes,
     test_images) = read_recipe(parser)
    position = position_map(code_size, frequencies)
    train_set, val_set = CodeDataset(codes["train"], labels), CodeDataset(codes["validate"], labels)
    # the layouts are stored in split order; a batch names its maps, and these find their rows
    train_index = {name: i for i, name in enumerate(codes["train"]["names"])}
    val_index = {name: i for i, name in enumerate(codes["validate"]["names"])}
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=64, shuffle=False)
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(train_set), (opts.num_samples,), generator=generator)
    sample_labels = torch.stack([torch.as_tensor(train_set[int(i)].get("label", 0)) for i in picks]).long()
    report: dict[str, Any] = {
        "machine": machine_report(device, amp),
        "steps": opts.steps, "batch_size": batch_size, "learning_rate": base_lr, "num_samples": opts.num_samples,
        "overrides": opts.set, "code_size": list(code_size), "num_train": len(train_set), "num_test": len(test_images),
    }

    def batch_of(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        label = batch.get("label")
        x = batch["codes"].long().to(device)
        return x, (torch.zeros(len(x), dtype=torch.long) if label is None else label).to(device)

    def measure(name: str, network: nn.Module, training: dict[str, Any], val_bits: float, images: torch.Tensor,
                seconds: float) -> None:
        realism = classifier_two_sample_test(images.clamp(0, 1), test_images, seed=0)
        report[name] = {"parameters": sum(p.numel() for p in network.parameters()), **training,
                        "val_bits_per_code": val_bits, "sampling_seconds_per_sample": seconds / len(images),
                        "classifier_auc_vs_test": realism["auc"], "classifier_auc_std": realism["auc_std"],
                        "classifier_auc_ci95": realism["auc_ci95"]}
        print(name, json.dumps(report[name]), flush=True)
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(json.dumps(report, indent=2, default=str))

    layouts: dict[str, torch.Tensor] = {}
    if "layout_oracle" in opts.variants:
        for split in ("train", "validate"):
            decoded = decode_codes(vqvae, codes[split]["codes"].long())
            layouts[split] = image_layout(decoded, opts.layout_cell, opts.layout_levels)

    for variant in opts.variants:
        torch.manual_seed(0)
        if variant in ("baseline", "layout_oracle"):
            layout_channels = 16 if variant == "layout_oracle" else 0
            if layout_channels:
                parser["prior_def"]["cond_channels"] = position.shape[0] + layout_channels
            network = parser.get_parsed_content("prior_def", instantiate=True, lazy=False).to(device)
            parser["prior_def"]["cond_channels"] = "$monai_vqbrain.prior.position_channels(@prior_position_frequencies)"
            encoder = LayoutEncoder(opts.layout_levels, layout_channels, code_size).to(device) if layout_channels else None
            modules = nn.ModuleList([network] + ([encoder] if encoder is not None else []))
            optimizer = torch.optim.Adam(modules.parameters(), lr=base_lr)

            def condition(batch_layouts: torch.Tensor | None, count: int, encoder=encoder) -> torch.Tensor:
                cond = position.to(device).expand(count, -1, -1, -1)
                return cond if encoder is None else torch.cat([cond, encoder(batch_layouts.to(device))], 1)

            def logits_fn(batch, split="train", network=network, condition=condition, variant=variant):
                x, y = batch_of(batch)
                index = train_index if split == "train" else val_index
                batch_layouts = None
                if variant == "layout_oracle":
                    batch_layouts = layouts[split][[index[n] for n in batch["name"]]]
                with autocast(device, amp):
                    return network(x, class_labels=y, cond_map=condition(batch_layouts, len(x))), x

            training = train_steps(opts.steps, training_step(modules, optimizer, logits_fn), optimizer, base_lr,
                                   train_loader)
            modules.eval()
            val_bits = bits_per_code(lambda b: logits_fn(b, "validate"), val_loader)
            start = time.perf_counter()
            with torch.no_grad():
                cond = condition(layouts["train"][picks] if variant == "layout_oracle" else None, len(picks))
                sampled = network.sample(len(picks), code_size, generator=torch.Generator().manual_seed(1),
                                         class_labels=sample_labels.to(device), cond_map=cond.float())
            images = decode_codes(vqvae, sampled).float().cpu()
            measure(variant, modules, training, val_bits, images, time.perf_counter() - start)
        else:
            network = MaskedCodePrior(int(vqvae.num_embeddings), num_classes, position).to(device)
            optimizer = torch.optim.Adam(network.parameters(), lr=base_lr)

            def masked_logits(batch, generator=None, network=network):
                x, y = batch_of(batch)
                inputs, masked = network.mask(x.cpu(), generator)
                with autocast(device, amp):
                    logits = network(inputs.to(device), y)
                return logits.permute(0, 2, 3, 1)[masked.to(device)], x[masked.to(device)]

            training = train_steps(opts.steps, training_step(network, optimizer, masked_logits), optimizer, base_lr,
                                   train_loader)
            network.eval()
            val_generator = torch.Generator().manual_seed(0)
            val_bits = bits_per_code(lambda b, g=val_generator: masked_logits(b, g), val_loader)
            start = time.perf_counter()
            sampled = network.sample(sample_labels.to(device), code_size, opts.masked_steps,
                                     torch.Generator().manual_seed(1), lambda: autocast(device, amp))
            images = decode_codes(vqvae, sampled).float().cpu()
            measure(variant, network, training, val_bits, images, time.perf_counter() - start)
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
