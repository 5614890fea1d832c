"""What gives the prior's samples away? Code and image statistics, where the classifier looks, a corruption ladder,
the graded realism measure on a ladder of known order, and sampling-time levers (issue 17).

Run on a bundle root that holds the README's VQ-VAE (``training``) and a prior (``training_prior``), e.g. with epoch
snapshots from ``--prior_save_epochs "[2, 6]"``::

    OMP_NUM_THREADS=1 python benchmarks/prior_diagnosis.py --bundle_root <root> \\
        --snapshot 2=<root>/models/prior_epoch_2.pt --snapshot 6=<root>/models/prior_epoch_6.pt

Sections (``--sections``, all by default):

* ``codes``: sampled vs real test code maps: code frequencies (total variation distance to the training maps'),
  horizontal and vertical neighbour pairs and 2x2 blocks never seen in any training map, per-position entropy, and
  each set's negative log-likelihood under the prior (bits per code).
* ``images``: inside the brain mask, generated vs real test vs reconstructed test: intensity histograms, radially
  averaged power spectra, gradient magnitude distributions (1-Wasserstein distances to the real ones).
* ``saliency``: where the classifier looks: the class activation map of a :class:`RealismClassifier` trained on half
  of the subjects and samples, averaged over the held-out generated and real slices, and its input-gradient
  saliency; and a patch-level classifier (32x32 crops) whose held-out AUC per patch position maps where fakes are
  detectable.
* ``ladder``: real test code maps with a share p of their codes replaced by draws from the prior given the real
  codes before them (p = 0, 1, 5, 20, 50 %), decoded; plus blurred real slices, real training slices and the
  samples of each prior snapshot: classifier AUC and d' (the graded measure) against the real test slices, with
  intervals. The order real > reconstructed > 1 % > 5 % > 20 % > 50 % resampled, and later > earlier snapshots,
  is known: a graded measure must rank it.
* ``levers``: sampling-time levers on the same seeds: nucleus sampling (top-p), resampling the codes the prior finds
  least likely (a token-critic-like pass), projection onto the code manifold (decode, encode, quantise, decode).

Everything is written to ``--output`` (JSON) and ``--figure`` (PNG).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_comparison import REPO_ROOT, load_recipe, machine_report  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
FOREGROUND = 0.05  # intensity above which a pixel is brain (GenerationQuality's foreground threshold)


# ------------------------------------------------------------------------------------------------ the setting
class Setting:
    """The VQ-VAE, the cached training codes, the real test slices (names, codes, reconstructions) and the priors."""

    def __init__(self, bundle_root: Path, prior_path: Path, snapshots: dict[str, Path]) -> None:
        from monai_vqbrain.data import get_dataset
        from monai_vqbrain.prior import SlicePositionLabels, load_prior, parse_slice_index
        from monai_vqbrain.prior.realism import slice_groups

        parser = load_recipe(bundle_root, None)
        self.device = parser.get_parsed_content("run_device")
        self.vqvae = parser.get_parsed_content("vqvae").eval()
        codes = parser.get_parsed_content("prior_codes")
        self.train_codes = codes["train"]["codes"].long()
        self.train_names = list(codes["train"]["names"])
        dataset_kwargs = parser.get_parsed_content("dataset_kwargs")
        image_size = int(parser.get_parsed_content("image_size"))
        test = get_dataset(split="test", **{**dataset_kwargs, "image_size": image_size, "cache_rate": 0.0})
        items = [test[i] for i in range(len(test))]
        self.test_images = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
        self.test_names = [str(item["name"]) for item in items]
        self.test_groups = slice_groups(self.test_names)
        train = get_dataset(split="train", **{**dataset_kwargs, "image_size": image_size, "cache_rate": 0.0})
        picks = np.unique(np.linspace(0, len(train) - 1, len(self.test_images)).round().astype(int))
        train_items = [train[int(i)] for i in picks]
        self.train_images = torch.stack([torch.as_tensor(item["image"]).float() for item in train_items])
        self.train_groups = slice_groups([str(item["name"]) for item in train_items])
        with torch.no_grad():
            self.test_codes = torch.cat(
                [self.vqvae.index_quantize(self.test_images[i : i + 64].to(self.device)).cpu() for i in range(0, len(items), 64)]
            ).long()
        self.reconstructions = self.decode(self.test_codes)
        self.priors: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}
        for label, path in {"default": prior_path, **snapshots}.items():
            self.priors[label] = load_prior(path, self.device, vqvae=self.vqvae)
        metadata = self.priors["default"][1]
        self.labels = SlicePositionLabels.from_metadata(metadata.get("conditioning") or {})
        self.code_size = tuple(int(s) for s in self.test_codes.shape[1:])
        self.frequencies = int(metadata.get("position_frequencies") or 0)
        self.num_embeddings = int(metadata["network_settings"]["num_embeddings"])
        self.test_labels = self.labels([parse_slice_index(n) for n in self.test_names])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        from monai_vqbrain.prior import decode_codes

        with torch.no_grad():
            return decode_codes(self.vqvae, codes)

    def cond_map(self, count: int) -> torch.Tensor | None:
        from monai_vqbrain.prior import position_map

        if self.frequencies <= 0:
            return None
        return position_map(self.code_size, self.frequencies).expand(count, -1, -1, -1).to(self.device)

    @torch.no_grad()
    def logits(self, prior: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The prior's logits ``(N, K, h, w)`` (float32, CPU) of each code given the codes before it."""
        out = []
        for i in range(0, len(codes), 64):
            chunk = codes[i : i + 64].to(self.device)
            label = None if labels is None else labels[i : i + 64].to(self.device)
            out.append(prior(chunk, label, self.cond_map(len(chunk))).float().cpu())
        return torch.cat(out)

    def sample(self, label: str, count: int, seed: int = 0, temperature: float = 1.0, top_p: float = 1.0):
        """``count`` code maps of prior ``label``, their class labels, and the sampling seconds."""
        prior = self.priors[label][0]
        labels = self.labels.sample_labels(count)
        seeds = torch.arange(count, dtype=torch.long) + 1_000_003 * seed
        start = time.perf_counter()
        with torch.no_grad():
            codes = prior.sample(
                count, self.code_size, temperature=temperature, class_labels=None if labels is None else labels.to(self.device),
                cond_map=self.cond_map(count), seeds=seeds, top_p=top_p,
            ).cpu()
        return codes, labels, time.perf_counter() - start


def bits_per_code(setting: Setting, prior: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor | None) -> float:
    logits = setting.logits(prior, codes, labels)
    return float(F.cross_entropy(logits, codes)) / math.log(2.0)


# ------------------------------------------------------------------------------------------------- code stats
def _keys(codes: torch.Tensor, kind: str, k: int) -> np.ndarray:
    c = codes.long()
    if kind == "horizontal":
        keys = c[:, :, :-1] * k + c[:, :, 1:]
    elif kind == "vertical":
        keys = c[:, :-1, :] * k + c[:, 1:, :]
    else:  # 2x2 blocks
        keys = ((c[:, :-1, :-1] * k + c[:, :-1, 1:]) * k + c[:, 1:, :-1]) * k + c[:, 1:, 1:]
    return keys.reshape(len(c), -1).numpy()


def _position_entropy(codes: torch.Tensor, k: int) -> torch.Tensor:
    """The entropy (bits) of the code at each position over the set: ``(h, w)``."""
    one_hot = F.one_hot(codes.long(), k).double().mean(0)  # (h, w, K)
    return -(one_hot * torch.log2(one_hot.clamp_min(1e-12))).sum(-1)


def code_statistics(setting: Setting, sampled: torch.Tensor, sampled_labels: torch.Tensor | None) -> dict[str, Any]:
    k, prior = setting.num_embeddings, setting.priors["default"][0]
    train_hist = torch.bincount(setting.train_codes.flatten(), minlength=k).double()
    train_hist /= train_hist.sum()
    seen = {kind: set(np.unique(_keys(setting.train_codes, kind, k)).tolist()) for kind in ("horizontal", "vertical", "block")}
    out: dict[str, Any] = {}
    for name, codes, labels in (("sampled", sampled, sampled_labels), ("real_test", setting.test_codes, setting.test_labels)):
        hist = torch.bincount(codes.flatten(), minlength=k).double()
        hist /= hist.sum()
        entry: dict[str, Any] = {
            "codes_used": int((hist > 0).sum()),
            "tv_distance_to_train_code_frequencies": float(0.5 * (hist - train_hist).abs().sum()),
        }
        for kind in ("horizontal", "vertical", "block"):
            keys = _keys(codes, kind, k)
            unseen = ~np.isin(keys, np.fromiter(seen[kind], dtype=np.int64))
            entry[f"unseen_{kind}_share"] = float(unseen.mean())
            entry[f"unseen_{kind}_per_map_mean"] = float(unseen.sum(1).mean())
        entropy = _position_entropy(codes, k)
        entry["position_entropy_bits_mean"] = float(entropy.mean())
        entry["bits_per_code_under_prior"] = bits_per_code(setting, prior, codes, labels)
        out[name] = entry
        out[f"_entropy_map_{name}"] = entropy
    # the pairs themselves: frequencies of the most common horizontal pairs, sampled vs real test
    return out


# ------------------------------------------------------------------------------------------------ image stats
def _sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None] / 8
    gx = F.conv2d(images, kx, padding=1)
    gy = F.conv2d(images, kx.transpose(-1, -2), padding=1)
    return (gx**2 + gy**2).sqrt()


def radial_power_spectrum(images: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """The mean radially averaged power spectrum ``(bins,)`` (log10) of images ``(N, 1, S, S)``."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(images[:, 0] - images[:, 0].mean((-1, -2), keepdim=True)), dim=(-2, -1))
    power = spectrum.abs().pow(2).mean(0)
    size = images.shape[-1]
    y, x = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    radius = (x**2 + y**2).float().sqrt() / (size / 2)
    index = (radius * bins).long().clamp(max=bins)
    totals = torch.zeros(bins + 1).index_add_(0, index.flatten(), power.flatten().float())
    counts = torch.zeros(bins + 1).index_add_(0, index.flatten(), torch.ones(index.numel()))
    return torch.log10(totals[:bins] / counts[:bins].clamp_min(1))


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b))


def image_statistics(sets: dict[str, torch.Tensor]) -> dict[str, Any]:
    real = sets["real_test"]
    real_mask = real > FOREGROUND
    real_values = real[real_mask].numpy()
    real_gradients = _sobel_magnitude(real)[real_mask].numpy()
    real_spectrum = radial_power_spectrum(real)
    out: dict[str, Any] = {"_spectra": {}, "_histograms": {}, "_gradients": {}}
    edges = np.linspace(0, 1, 51)
    for name, images in sets.items():
        mask = images > FOREGROUND
        values, gradients = images[mask].numpy(), _sobel_magnitude(images)[mask].numpy()
        spectrum = radial_power_spectrum(images)
        bins = len(spectrum)
        ratio = (spectrum - real_spectrum).numpy()
        out[name] = {
            "brain_fraction": float(mask.float().mean()),
            "intensity_mean": float(values.mean()),
            "intensity_w1_to_real": _wasserstein(values[::7], real_values[::7]),
            "gradient_mean": float(gradients.mean()),
            "gradient_w1_to_real": _wasserstein(gradients[::7], real_gradients[::7]),
            # log10 power ratio to the real slices in thirds of the frequency range (low, mid, high)
            "log10_power_ratio_low_mid_high": [float(ratio[: bins // 3].mean()), float(ratio[bins // 3 : 2 * bins // 3].mean()),
                                               float(ratio[2 * bins // 3 :].mean())],
        }
        out["_spectra"][name] = spectrum.tolist()
        out["_histograms"][name] = np.histogram(values, bins=edges, density=True)[0].tolist()
        out["_gradients"][name] = np.histogram(gradients, bins=np.linspace(0, 0.1, 51), density=True)[0].tolist()
    return out


# ------------------------------------------------------------------------------------------- where it looks
def _fit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int):
    """A :class:`RealismClassifier` trained as the two-sample test trains each fold (Adam, flips, BCE)."""
    from monai_vqbrain.prior.realism import RealismClassifier

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = RealismClassifier()
    optimiser = torch.optim.Adam(network.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_function = torch.nn.BCEWithLogitsLoss()
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            if len(batch) < 2:
                continue
            inputs = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)
            optimiser.zero_grad(set_to_none=True)
            loss_function(network(inputs), labels[batch]).backward()
            optimiser.step()
    return network.eval()


def _class_activation(network, images: torch.Tensor) -> torch.Tensor:
    """CAM: the linear head applied at every position of the last features (global pooling then is the logit)."""
    with torch.no_grad():
        features = network.features(images)
        weight = network.head[1].weight[0]
        cam = torch.einsum("bchw,c->bhw", features, weight)[:, None]
        return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def saliency(setting: Setting, generated: torch.Tensor, epochs: int, seed: int, patch: int = 32) -> dict[str, Any]:
    from monai.metrics import compute_roc_auc

    subjects = sorted(set(setting.test_groups))
    train_subjects = set(subjects[0::2])
    real_train = torch.tensor([g in train_subjects for g in setting.test_groups])
    real_a, real_b = setting.test_images[real_train], setting.test_images[~real_train]
    gen_a, gen_b = generated[0::2], generated[1::2]
    images = torch.cat([gen_a, real_a])
    labels = torch.cat([torch.zeros(len(gen_a)), torch.ones(len(real_a))])
    network = _fit_classifier(images, labels, epochs, seed)
    with torch.no_grad():
        held_scores = torch.cat([network(gen_b), network(real_b)])
    held_auc = float(compute_roc_auc(held_scores, torch.cat([torch.zeros(len(gen_b)), torch.ones(len(real_b))])))
    cam_generated, cam_real = _class_activation(network, gen_b).mean(0), _class_activation(network, real_b).mean(0)
    gradients = []
    for batch in (gen_b, real_b):
        x = batch.clone().requires_grad_(True)
        network(x).sum().backward()
        gradients.append(x.grad.abs().mean(0)[0])

    # patch-level classifier: 32x32 crops on a grid, trained on the training halves, AUC per position held out
    stride = patch // 2
    size = generated.shape[-1]
    starts = list(range(0, size - patch + 1, stride))

    def crops(batch: torch.Tensor) -> torch.Tensor:  # (N, P, 1, patch, patch), positions row-major
        tiles = F.unfold(batch, patch, stride=stride)  # (N, patch*patch, P)
        return tiles.transpose(1, 2).reshape(len(batch), -1, 1, patch, patch)

    train_patches = torch.cat([crops(gen_a), crops(real_a)])
    train_labels = torch.cat([torch.zeros(len(gen_a)), torch.ones(len(real_a))])[:, None].expand(-1, train_patches.shape[1])
    keep = train_patches.flatten(2).amax(-1) > FOREGROUND  # patches with some brain
    patch_net = _fit_classifier(train_patches[keep], train_labels[keep].contiguous(), max(1, epochs // 2), seed + 1)
    held_gen, held_real = crops(gen_b), crops(real_b)
    grid = torch.full((len(starts), len(starts)), float("nan"))
    with torch.no_grad():
        for position in range(held_gen.shape[1]):
            g, r = held_gen[:, position], held_real[:, position]
            if (g.flatten(1).amax(1) > FOREGROUND).float().mean() < 0.5 or (r.flatten(1).amax(1) > FOREGROUND).float().mean() < 0.5:
                continue  # mostly background here: nothing to judge
            scores = torch.cat([patch_net(g), patch_net(r)])
            auc = compute_roc_auc(scores, torch.cat([torch.zeros(len(g)), torch.ones(len(r))]))
            grid[position // len(starts), position % len(starts)] = float(auc)
    brain = (setting.test_images > FOREGROUND).float().mean(0)[0]
    inside = brain > 0.5
    return {
        "held_out_auc_whole_image": held_auc,
        "cam_generated_mean_inside_brain": float(cam_generated[inside].mean()),
        "cam_generated_mean_outside_brain": float(cam_generated[~inside].mean()),
        "cam_real_mean_inside_brain": float(cam_real[inside].mean()),
        "gradient_saliency_inside_over_outside_generated": float(gradients[0][inside].mean() / gradients[0][~inside].mean().clamp_min(1e-12)),
        "patch_auc_grid": [[None if math.isnan(v) else v for v in row] for row in grid.tolist()],
        "patch_auc_mean": float(grid[~grid.isnan()].mean()),
        "patch_auc_min": float(grid[~grid.isnan()].min()),
        "patch_size": patch,
        "_cam": (cam_generated - cam_real),
        "_gradient": gradients[0],
        "_patch_grid": grid,
    }


# ---------------------------------------------------------------------------------------------------- ladder
def resample_share(setting: Setting, prior, codes: torch.Tensor, labels, share: float, seed: int) -> torch.Tensor:
    """Replace a share of the codes by draws from the prior given the (original) codes before each of them."""
    if share <= 0:
        return codes.clone()
    generator = torch.Generator().manual_seed(seed)
    logits = setting.logits(prior, codes, labels)
    chosen = torch.rand(codes.shape, generator=generator) < share
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator).clamp_min(1e-20)))
    drawn = (logits + gumbel).argmax(1)
    return torch.where(chosen, drawn, codes)


def resample_unlikely(setting: Setting, prior, codes: torch.Tensor, labels, share: float, seed: int, passes: int = 1):
    """Token-critic-like: redraw the ``share`` of codes the prior finds least likely given the codes before them
    (from the prior's conditional there), ``passes`` times."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(passes):
        logits = setting.logits(prior, codes, labels)
        log_p = torch.log_softmax(logits, 1).gather(1, codes[:, None])[:, 0]  # (N, h, w)
        count = max(1, int(round(share * log_p[0].numel())))
        threshold = log_p.flatten(1).kthvalue(count, dim=1).values[:, None, None]
        chosen = log_p <= threshold
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator).clamp_min(1e-20)))
        codes = torch.where(chosen, (logits + gumbel).argmax(1), codes)
    return codes


def project(setting: Setting, images: torch.Tensor) -> torch.Tensor:
    """Decode -> encode -> quantise -> decode: the sample brought back onto the codes real slices give."""
    with torch.no_grad():
        codes = torch.cat([setting.vqvae.index_quantize(images[i : i + 64].to(setting.device)).cpu() for i in range(0, len(images), 64)])
    return setting.decode(codes.long())


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel[None, None, None, :])
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel[None, None, :, None])


def two_sample(images: torch.Tensor, groups, setting: Setting, folds: int, epochs: int, seed: int) -> dict[str, Any]:
    from monai_vqbrain.prior.realism import classifier_two_sample_test

    result = classifier_two_sample_test(
        images.clamp(0, 1), setting.test_images, groups, setting.test_groups, folds=folds, epochs=epochs, seed=seed
    )
    return {key: result[key] for key in ("auc", "auc_ci95", "dprime", "dprime_ci95", "num_first", "seconds")}


# ------------------------------------------------------------------------------------------------------ figure
def figure(report: dict[str, Any], arrays: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(16, 11.5))
    axes = axes.ravel()
    for ax in axes:
        ax.set_visible(False)

    def show(ax, image, title, **kwargs):
        ax.set_visible(True)
        im = ax.imshow(image, **kwargs)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)

    def plot(ax, title):
        ax.set_visible(True)
        ax.set_title(title, fontsize=9)
        return ax

    if "examples" in arrays:
        real, generated = arrays["examples"]
        show(axes[0], torch.cat([real, generated], dim=-2)[0], "real test (top) / generated (bottom)", cmap="gray")
    if "entropy" in arrays:
        sampled, real = arrays["entropy"]
        show(axes[1], (sampled - real).numpy(), "per-position entropy, sampled - real (bits)", cmap="coolwarm")
    if "images" in report:
        stats = report["images"]
        ax = plot(axes[2], "intensity inside brain (density)")
        for name, values in stats["_histograms"].items():
            ax.plot(np.linspace(0, 1, 51)[:-1] + 0.01, values, label=name)
        ax.legend(fontsize=7)
        ax = plot(axes[3], "radial power spectrum (log10)")
        for name, values in stats["_spectra"].items():
            ax.plot(np.linspace(0, 1, len(values)), values, label=name)
        ax.set_xlabel("frequency / Nyquist")
        ax.legend(fontsize=7)
        ax = plot(axes[4], "gradient magnitude inside brain (density)")
        for name, values in stats["_gradients"].items():
            ax.plot(np.linspace(0, 0.1, 51)[:-1], values, label=name)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if "cam" in arrays:
        show(axes[5], arrays["cam"].numpy(), "classifier CAM, generated - real (held out)", cmap="coolwarm")
        show(axes[6], arrays["gradient"].numpy(), "input-gradient saliency, generated", cmap="magma")
        show(axes[7], arrays["patch_grid"].numpy(), "patch classifier AUC per position", cmap="viridis", vmin=0.5, vmax=1.0)
    if "ladder" in report:
        ladder = report["ladder"]
        names = [n for n in ladder if not n.startswith("_")]
        for ax, key, title in ((axes[8], "auc", "classifier AUC vs real test"), (axes[9], "dprime", "classifier d' vs real test")):
            plot(ax, title)
            values = [ladder[n][key] for n in names]
            low = [ladder[n][key] - ladder[n][f"{key}_ci95"][0] for n in names]
            high = [ladder[n][f"{key}_ci95"][1] - ladder[n][key] for n in names]
            ax.errorbar(range(len(names)), values, yerr=[low, high], fmt="o")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if "levers" in report:
        levers = {n: v for n, v in report["levers"].items() if isinstance(v, dict) and "dprime" in v}
        ax = plot(axes[10], "sampling levers: d' (lower = more realistic)")
        names = list(levers)
        ax.errorbar(range(len(names)), [levers[n]["dprime"] for n in names],
                    yerr=[[levers[n]["dprime"] - levers[n]["dprime_ci95"][0] for n in names],
                          [levers[n]["dprime_ci95"][1] - levers[n]["dprime"] for n in names]], fmt="o")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--bundle_root", type=Path, required=True)
    args.add_argument("--prior", type=Path, default=None, help="the prior diagnosed (default <root>/models/prior.pt)")
    args.add_argument("--snapshot", action="append", default=[], metavar="LABEL=PATH",
                      help="further priors (e.g. epoch snapshots) whose samples join the ladder")
    args.add_argument("--sections", nargs="+", default=["codes", "images", "saliency", "ladder", "levers"])
    args.add_argument("--num_samples", type=int, default=256)
    args.add_argument("--folds", type=int, default=5)
    args.add_argument("--classifier_epochs", type=int, default=10)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--top_p", type=float, nargs="*", default=[0.9], help="nucleus sampling levers")
    args.add_argument("--output", type=Path, default=RESULTS / "prior_diagnosis.json")
    args.add_argument("--figure", type=Path, default=RESULTS / "prior_diagnosis.png")
    opts = args.parse_args(argv)
    root = opts.bundle_root.resolve()
    snapshots = {}
    for item in opts.snapshot:
        label, path = item.split("=", 1)
        snapshots[label] = Path(path)
    started = time.perf_counter()
    setting = Setting(root, opts.prior or root / "models" / "prior.pt", snapshots)
    report: dict[str, Any] = {
        "machine": machine_report(setting.device, False),
        "command": " ".join(["python", "benchmarks/prior_diagnosis.py", *(argv if argv is not None else sys.argv[1:])]),
        "num_samples": opts.num_samples, "num_test": len(setting.test_images), "folds": opts.folds,
        "classifier_epochs": opts.classifier_epochs,
        "priors": {label: {"epoch": meta.get("epoch"), "val_bits_per_code": meta.get("key_metric")}
                   for label, (_, meta) in setting.priors.items()},
    }
    arrays: dict[str, Any] = {}

    def save() -> None:
        report["seconds"] = time.perf_counter() - started
        clean = json.loads(json.dumps(report, default=lambda o: None))
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(json.dumps(clean, indent=1))
        figure(report, arrays, opts.figure)

    prior = setting.priors["default"][0]
    sampled, sampled_labels, seconds = setting.sample("default", opts.num_samples, opts.seed)
    generated = setting.decode(sampled)
    report["sampling_seconds_per_sample"] = seconds / opts.num_samples
    arrays["examples"] = (setting.test_images[:: max(1, len(setting.test_images) // 8)][:8].permute(1, 2, 0, 3).reshape(1, setting.test_images.shape[-1], -1),
                          generated[:: max(1, len(generated) // 8)][:8].permute(1, 2, 0, 3).reshape(1, generated.shape[-1], -1))

    if "codes" in opts.sections:
        stats = code_statistics(setting, sampled, sampled_labels)
        arrays["entropy"] = (stats.pop("_entropy_map_sampled"), stats.pop("_entropy_map_real_test"))
        report["codes"] = stats
        print("codes", json.dumps(stats), flush=True)
        save()
    if "images" in opts.sections:
        report["images"] = image_statistics(
            {"real_test": setting.test_images, "reconstructed_test": setting.reconstructions, "generated": generated}
        )
        print("images", json.dumps({k: v for k, v in report["images"].items() if not k.startswith("_")}), flush=True)
        save()
    if "saliency" in opts.sections:
        result = saliency(setting, generated, opts.classifier_epochs, opts.seed)
        arrays["cam"], arrays["gradient"], arrays["patch_grid"] = result.pop("_cam"), result.pop("_gradient"), result.pop("_patch_grid")
        report["saliency"] = result
        print("saliency", json.dumps(result), flush=True)
        save()

    def measure(section: str, name: str, images: torch.Tensor, groups, extra: dict[str, Any] | None = None) -> None:
        entry = {**two_sample(images, groups, setting, opts.folds, opts.classifier_epochs, opts.seed), **(extra or {})}
        report.setdefault(section, {})[name] = entry
        print(section, name, json.dumps(entry), flush=True)
        save()

    if "ladder" in opts.sections:
        measure("ladder", "real train", setting.train_images, setting.train_groups)
        for share in (0.0, 0.01, 0.05, 0.2, 0.5):
            codes = resample_share(setting, prior, setting.test_codes, setting.test_labels, share, opts.seed)
            name = "reconstructed" if share == 0 else f"resampled {share:.0%}"
            measure("ladder", name, setting.decode(codes), setting.test_groups,
                    {"bits_per_code": bits_per_code(setting, prior, codes, setting.test_labels)})
        measure("ladder", "blurred sigma 1", blur(setting.test_images, 1.0), setting.test_groups)
        for label in [*snapshots, "default"]:
            if label == "default":  # the same seeds as the samples drawn above
                codes, labels = sampled, sampled_labels
            else:
                codes, labels, _ = setting.sample(label, opts.num_samples, opts.seed)
            epoch = setting.priors[label][1].get("epoch")
            measure("ladder", f"generated, epoch {epoch} ({label})", setting.decode(codes), None,
                    {"bits_per_code_under_default": bits_per_code(setting, prior, codes, labels)})
    if "levers" in opts.sections:
        base = {"bits_per_code_under_prior": bits_per_code(setting, prior, sampled, sampled_labels)}
        if "ladder" in report and "generated, epoch" in " ".join(report["ladder"]):
            key = next(n for n in report["ladder"] if n.endswith("(default)"))
            report.setdefault("levers", {})["baseline"] = {**report["ladder"][key], **base}
        else:
            measure("levers", "baseline", generated, None, base)
        for top_p in opts.top_p:
            codes, labels, secs = setting.sample("default", opts.num_samples, opts.seed, top_p=top_p)
            measure("levers", f"top_p {top_p}", setting.decode(codes), None,
                    {"bits_per_code_under_prior": bits_per_code(setting, prior, codes, labels),
                     "sampling_seconds_per_sample": secs / opts.num_samples})
        start = time.perf_counter()
        critic = resample_unlikely(setting, prior, sampled, sampled_labels, 0.05, opts.seed, passes=2)
        measure("levers", "resample least likely 5% x2", setting.decode(critic), None,
                {"bits_per_code_under_prior": bits_per_code(setting, prior, critic, sampled_labels),
                 "extra_seconds_per_sample": (time.perf_counter() - start) / opts.num_samples})
        start = time.perf_counter()
        projected = project(setting, generated)
        measure("levers", "projection (decode-encode-decode)", projected, None,
                {"extra_seconds_per_sample": (time.perf_counter() - start) / opts.num_samples})
    save()
    return report


if __name__ == "__main__":
    main()
