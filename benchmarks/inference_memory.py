"""Peak memory (RSS) of ``inferring`` on one large NIfTI volume, and of building a training data set from it.

Issue 19: memory bounded by a slice. Writes a brain-like int16 volume of ``--side``³ voxels and a checkpoint of the
default (untrained) VQ-VAE into ``--work_dir``, runs ``python -m monai.bundle run inferring`` on it in a child
process, and prints the child's peak resident memory (``ru_maxrss``) and wall time. ``--what dataset`` instead builds
the cached training split (``get_dataset``, the bundle's ``train#dataset``: listing, percentiles, foreground, caching)
of a data set whose train/validate/test folders hold that volume. Point ``--repo`` at another checkout to measure
its code.

    python benchmarks/inference_memory.py --side 512 --work_dir /tmp/inference_memory
    python benchmarks/inference_memory.py --side 512 --work_dir /tmp/inference_memory --what dataset
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def brain_volume(side: int, seed: int = 0) -> np.ndarray:
    """An int16 ellipsoid of varying intensity with noise on a zero background, built one axial slab at a time."""
    rng = np.random.default_rng(seed)
    volume = np.zeros((side, side, side), dtype=np.int16)
    axis = np.linspace(-1, 1, side, dtype=np.float32)
    xs, ys = np.meshgrid(axis, axis, indexing="ij")
    for k, z in enumerate(axis):
        radius = np.sqrt((xs / 0.8) ** 2 + (ys / 0.9) ** 2 + (z / 0.85) ** 2)
        slab = np.where(radius < 1, 300 + 500 * (1 - radius) + rng.normal(0, 20, radius.shape), 0)
        volume[:, :, k] = slab.astype(np.int16)
    return volume


def write_inputs(work_dir: Path, side: int, repo: Path) -> tuple[Path, Path]:
    """The volume and a checkpoint of the default network (the bundle's ``network_def``), written once."""
    work_dir.mkdir(parents=True, exist_ok=True)
    volume = work_dir / f"brain{side}.nii.gz"
    if not volume.exists():
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image(brain_volume(side), affine), str(volume))
    checkpoint = work_dir / "model.pt"
    if not checkpoint.exists():
        code = (
            "import sys, torch; from monai.bundle import ConfigParser; from monai_vqbrain.utils import save_checkpoint\n"
            f"p = ConfigParser(); p.read_config('{repo / 'bundle/configs/train.json'}')\n"
            "net = p.get_parsed_content('network_def')\n"
            f"save_checkpoint('{checkpoint}', {{'model': net.state_dict(), 'metadata': {{'image_size': 128}}}})\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo)
    return volume, checkpoint


def measure_dataset(work_dir: Path, volume: Path, repo: Path) -> None:
    """Peak RSS of building the cached train split (image size 128) of a data set made of ``volume``."""
    root = work_dir / "dataset"
    for split in ("train", "validate", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        link = root / split / volume.name
        if not link.is_symlink():
            link.symlink_to(volume)
    code = (
        "import resource, time; from monai_vqbrain.data import get_dataset\n"
        "start = time.time()\n"
        f"dataset = get_dataset('{root}', 'train', image_size=128, cache_rate=1.0)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
        "print(f'{len(dataset)} slices cached: peak RSS {peak:.2f} GiB, {time.time() - start:.0f} s')\n"
    )
    # run in the checkout: a child's sys.path starts with its working folder, before PYTHONPATH
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo,
                            capture_output=True, text=True)
    print(f"{repo}: training data set of one {volume.name}: " + (result.stdout.strip() or result.stderr[-3000:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=512, help="the volume's side in voxels")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/inference_memory"))
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code is measured")
    parser.add_argument("--what", choices=("inferring", "dataset"), default="inferring")
    args = parser.parse_args()
    volume, checkpoint = write_inputs(args.work_dir, args.side, args.repo)
    if args.what == "dataset":
        measure_dataset(args.work_dir, volume, args.repo)
        return
    output_dir = args.work_dir / f"out_{args.repo.name}"
    configs = [str(args.repo / "bundle/configs/train.json"), str(args.repo / "bundle/configs/inference.json")]
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", repr(configs),
        "--bundle_root", str(args.work_dir), "--input", str(volume), "--output_dir", str(output_dir),
        "--checkpoint", str(checkpoint), "--overwrite", "True", "--save_codes", "False", "--progress", "False",
    ]
    start = time.time()
    result = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": str(args.repo)}, cwd=args.repo, capture_output=True, text=True
    )
    seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kilobytes on Linux -> GiB
    if result.returncode != 0:
        print(result.stderr[-3000:])
    size = volume.stat().st_size / 2**20
    print(
        f"{args.repo}: {args.side}^3 int16 volume ({size:.1f} MiB .nii.gz): exit {result.returncode}, "
        f"peak RSS {peak:.2f} GiB, {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
