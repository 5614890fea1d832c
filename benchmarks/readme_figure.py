"""The README's overview figure from a trained bundle root: test slices above their reconstructions, and real test
slices above slices the prior generated at the same slice positions.

Needs a bundle root where ``training`` and ``training_prior`` have run (``<ckpt_dir>/model.pt`` and
``<ckpt_dir>/prior.pt``) and the data they ran on (default: the demo data in ``<bundle_root>/data/demo_oasis``;
nothing is generated or downloaded). Everything goes through the package's own loaders and checks: the VQ-VAE is
``network_def`` of ``bundle/configs/train.json`` loaded with :func:`monai_vqbrain.prior.load_vqvae`, the prior is
built from its checkpoint by :func:`monai_vqbrain.prior.load_prior`, the test slices are listed and preprocessed by
the config's ``test#datalist`` (``evaluate.json``) and ``preprocessing``, and the generated codes are decoded with
:func:`monai_vqbrain.prior.decode_codes`. It takes a few seconds on a CPU.

Run ``python benchmarks/readme_figure.py --bundle_root <root> --output docs/images/overview.png --overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last included when ``count`` > 1."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [total // 2]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def pick_slices(datalist: list[dict[str, Any]], count: int, skip: int = 0) -> list[dict[str, Any]]:
    """``count`` test items spread from the base of the brain to the vertex: sorted by slice index, evenly spaced.

    Items whose name carries no slice index sort by name. ``skip`` shifts the choice by that many items, so two
    calls pick different slices of similar positions.
    """
    from monai_vqbrain.prior import parse_slice_index

    def position(item: dict[str, Any]) -> tuple[int, str]:
        index = parse_slice_index(str(item.get("name", "")))
        return (-1 if index is None else index, str(item.get("name", "")))

    ordered = sorted(datalist, key=position)
    chosen = evenly_spaced(count, len(ordered))
    return [ordered[min(i + skip, len(ordered) - 1)] for i in chosen]


def load_parts(opts: argparse.Namespace) -> dict[str, Any]:
    """The trained VQ-VAE, the prior, its metadata and the test datalist and preprocessing of the bundle root."""
    from monai.bundle import ConfigParser

    from monai_vqbrain.errors import CheckpointError, DatasetError
    from monai_vqbrain.prior import load_prior, load_vqvae, vqvae_fingerprint

    bundle_root = opts.bundle_root.resolve()
    presets = [str(CONFIGS / name) if Path(name).name == name else str(name) for name in opts.config]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *presets, str(CONFIGS / "evaluate.json")])
    parser["bundle_root"] = str(bundle_root)
    # the run's checkpoint folder: the presets' (generative.json keeps its own) unless given
    ckpt_dir = (opts.ckpt_dir or Path(parser.get_parsed_content("ckpt_dir"))).resolve()
    dataset_dir = (opts.dataset_dir or bundle_root / "data" / "demo_oasis").resolve()
    vqvae_file, prior_file = ckpt_dir / "model.pt", ckpt_dir / "prior.pt"
    for path, command in ((vqvae_file, "training"), (prior_file, "training_prior")):
        if not path.is_file():
            raise CheckpointError(f"'{path}' does not exist; run the bundle's {command} with this bundle root first.")
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset_dir '{dataset_dir}' does not exist; pass --dataset_dir, the data the run used.")

    # the image size the prior's code maps came from (its metadata records it, whatever the checkpoint layout), so
    # the run's own override is not needed; the prior is loaded again below, checked against the VQ-VAE
    image_size = int(load_prior(prior_file, device="cpu")[1].get("image_size") or opts.image_size)
    parser.update({"bundle_root": str(bundle_root), "ckpt_dir": str(ckpt_dir), "dataset_dir": str(dataset_dir),
                   "image_size": image_size, "device": "cpu", "amp": False,
                   **{f"network_def#{key}": value for key, value in opts.network.items()}})
    vqvae = load_vqvae(parser.get_parsed_content("network_def"), vqvae_file, image_size=image_size, device="cpu")
    prior, metadata = load_prior(prior_file, device="cpu", vqvae=vqvae, vqvae_sha256=vqvae_fingerprint(vqvae_file),
                                 image_size=image_size)
    return {
        "vqvae": vqvae, "prior": prior, "metadata": metadata, "image_size": image_size,
        "datalist": parser.get_parsed_content("test#datalist"), "preprocessing": parser.get_parsed_content("preprocessing"),
    }


@torch.no_grad()
def make_panels(parts: dict[str, Any], columns: int, seed: int) -> dict[str, torch.Tensor]:
    """The four rows of the figure as ``(columns, S, S)`` images in [0, 1], plus the slice names."""
    from monai_vqbrain.prior import SlicePositionLabels, decode_codes, parse_slice_index, position_map

    datalist = parts["datalist"]
    if not datalist:
        from monai_vqbrain.errors import DatasetError

        raise DatasetError("the test split holds no slices; pass --dataset_dir, the data the run used.")
    vqvae, prior, metadata = parts["vqvae"], parts["prior"], parts["metadata"]

    def load(items: list[dict[str, Any]]) -> torch.Tensor:
        return torch.stack([parts["preprocessing"](dict(item))["image"] for item in items]).float()

    # panel 1: test slices and their reconstructions; panel 2: other test slices of similar positions and samples
    recon_items = pick_slices(datalist, columns)
    real_items = pick_slices(datalist, columns, skip=1)
    originals = load(recon_items)
    reconstructions = decode_codes(vqvae, vqvae.index_quantize(originals))
    real = load(real_items)

    labels = SlicePositionLabels.from_metadata(metadata.get("conditioning") or {})
    slice_indices = [parse_slice_index(str(item.get("name", ""))) for item in real_items]
    class_labels = labels(slice_indices)
    code_size = tuple(int(s) for s in metadata.get("code_size") or [parts["image_size"] // vqvae.downsample_factor] * 2)
    frequencies = int(metadata.get("position_frequencies") or 0)
    cond_map = position_map(code_size, frequencies).expand(columns, -1, -1, -1) if frequencies > 0 else None
    codes = prior.sample(len(real_items), code_size, generator=torch.Generator().manual_seed(seed),
                         class_labels=class_labels, cond_map=cond_map, fast=True)
    generated = decode_codes(vqvae, codes)
    return {
        "originals": originals[:, 0], "reconstructions": reconstructions[:, 0], "real": real[:, 0],
        "generated": generated[:, 0], "recon_names": [item.get("name", "") for item in recon_items],
        "real_names": [item.get("name", "") for item in real_items],
    }


def plot_overview(panels: dict[str, Any], output: Path, overwrite: bool, which: str = "overview") -> None:
    """Draw the panels side by side and write them atomically to ``output``.

    ``which`` is ``"overview"`` (reconstructions beside samples: the home page) or ``"generation"`` (only real test
    slices above samples at the same positions: the generation section).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_vqbrain.utils import atomic_path

    columns = len(panels["originals"])
    rows = (("test slice", panels["originals"], "reconstructed", panels["reconstructions"]),
            ("real test slice", panels["real"], "generated", panels["generated"]))
    titles = ("test slices and their reconstructions, base of the brain to the vertex",
              "real test slices and samples of the prior at the same positions")
    if which == "generation":
        rows, titles = rows[1:], titles[1:]
    # square cells, a narrow gap between the panels, room for the row labels and the panel titles (inches)
    cell, gap, left, top = 1.25, 0.35, 0.25, 0.3
    width, height = len(rows) * (columns * cell + left) + (len(rows) - 1) * gap, 2 * cell + top
    figure = plt.figure(figsize=(width, height))
    for panel, (top_label, upper, bottom_label, lower) in enumerate(rows):
        x0 = left + panel * (columns * cell + gap + left)
        for row, (label, images) in enumerate(((top_label, upper), (bottom_label, lower))):
            for column in range(columns):
                # a thin white line between the slices: each image is a little smaller than its cell
                axis = figure.add_axes(((x0 + column * cell) / width, (1 - row) * cell / height,
                                        0.97 * cell / width, 0.97 * cell / height))
                axis.imshow(images[column].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                for spine in axis.spines.values():
                    spine.set_visible(False)
                if column == 0:
                    axis.set_ylabel(label, fontsize=8)
                if row == 0 and column == 0:
                    axis.set_title(titles[panel], fontsize=8, loc="left")
    with atomic_path(output, overwrite=overwrite) as tmp:
        figure.savefig(tmp, dpi=100, format="png", facecolor="white")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--bundle_root", type=Path, required=True, help="a bundle root where training and "
                      "training_prior have run")
    args.add_argument("--output", type=Path, required=True, help="the PNG to write, e.g. docs/images/overview.png")
    args.add_argument("--dataset_dir", type=Path, default=None, help="the data the run used (default: the demo data "
                      "in <bundle_root>/data/demo_oasis)")
    args.add_argument("--ckpt_dir", type=Path, default=None, help="default: the configs' (<bundle_root>/models, "
                      "<bundle_root>/models/generative with generative.json)")
    args.add_argument("--config", nargs="*", default=[], help="configs the run added to train.json, e.g. "
                      "generative.json (a bare name is read from bundle/configs)")
    args.add_argument("--columns", type=int, default=4, help="slices per panel")
    args.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    args.add_argument("--image_size", type=int, default=128, help="only for a prior whose metadata does not record it")
    args.add_argument("--network", type=json.loads, default={}, help="the run's network_def overrides as JSON, "
                      "e.g. '{\"num_embeddings\": 256}' (default: train.json's network)")
    args.add_argument("--panels", choices=("overview", "generation"), default="overview",
                      help="overview: reconstructions beside samples; generation: real test slices above samples only")
    args.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    opts = args.parse_args(argv)

    from monai_vqbrain.errors import VQBrainError

    try:
        if opts.columns < 1:
            raise ValueError(f"--columns must be >= 1, got {opts.columns}.")
        if not isinstance(opts.network, dict):
            raise ValueError(f"--network must be a JSON object of network_def settings, got {opts.network!r}.")
        if opts.output.exists() and not opts.overwrite:
            raise FileExistsError(f"'{opts.output}' exists; pass --overwrite to replace it.")
        with torch.no_grad():
            panels = make_panels(load_parts(opts), opts.columns, opts.seed)
        plot_overview(panels, opts.output, opts.overwrite, opts.panels)
    except (VQBrainError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2 if isinstance(error, ValueError) else 1)
    print(f"wrote {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
