"""The quality of generated images against the real splits: ``generate.json``'s metric :class:`GenerationQuality`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import EpochWise
from torch.utils.data import DataLoader, Dataset

from .frechet import bootstrap_frechet_interval, encoder_features, frechet_distance
from .precision_recall import knn_precision_recall
from .ssim import NearestImageSearch, bootstrap_mean_interval, mean_pairwise_ssim
from .two_sample import two_sample_entries

logger = logging.getLogger(__name__)


class _StageLog:
    """Log each of ``stages`` stages with the time spent so far (``measuring (2/5, 12 s): ...``): the metrics take
    minutes on a CPU after the sampler's progress bar has ended, and these lines show the run is moving, and where.
    """

    def __init__(self, stages: int) -> None:
        self.stages, self.done, self.started = stages, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        logger.info(f"measuring ({self.done}/{self.stages}, {elapsed:.0f} s): {what}")

    def batches(self, loader: DataLoader, what: str) -> Any:
        """Yield ``loader``'s batches, logging the items done at each quarter of them."""
        total, next_report, seen = len(loader.dataset), 0.25, 0
        for batch in loader:
            yield batch
            seen += len(_images(batch))
            if seen / total >= next_report and seen < total:
                logger.info(f"measuring: {what}: {seen}/{total} ({time.perf_counter() - self.started:.0f} s)")
                next_report = (int(seen / total / 0.25) + 1) * 0.25


#: samples a side below which the classifier two-sample AUC is too noisy to judge realism (on the demo data its 95%
#: interval is about +-0.2 at 32 a side and +-0.06 at 256)
RELIABLE_CLASSIFIER_SAMPLES = 256


def _images(batch: dict[str, Any]) -> torch.Tensor:
    images = batch["image"]
    return (images.as_tensor() if hasattr(images, "as_tensor") else images).float()


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (all of them when ``count <= wanted``)."""
    if count <= wanted:
        return list(range(count))
    return np.unique(np.linspace(0, count - 1, num=wanted).round().astype(int)).tolist()


def _stats(values: Sequence[float] | torch.Tensor) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"mean": None, "max": None}
    return {"mean": float(array.mean()), "max": float(array.max())}


class GenerationQuality(Metric):
    """The quality metrics of generated images as an Ignite metric of the real test images an evaluator streams.

    The engine's iterations output ``{"image": (B, 1, S, S) in [0, 1], "name": [str]}`` batches of the test split; at
    the end of the epoch the training split is streamed once and the samples are measured against both, in one
    dictionary that :data:`~monai_vqbrain.prior.GENERATION_METRICS_KEYS` describes: Fréchet distances
    (:func:`frechet_distance`) and precision and recall (:func:`knn_precision_recall`) in the space of
    :func:`encoder_features`, diversity (:func:`mean_pairwise_ssim`), memorisation (:class:`NearestImageSearch`; blank
    samples left out: an empty image matches any empty slice), the two-sample tests (:func:`two_sample_entries`) and
    foreground fractions. Each measure has references: the same for real images and for the VQ-VAE's reconstructions
    (what a prior over its codes can reach at best).

    Args:
        samples: the generated images: an object with ``images`` ``(N, 1, S, S)`` in [0, 1] and ``names`` (one per
            image), read when the evaluator starts (the sampler's :class:`~monai_vqbrain.prior.GeneratedSamples`).
        vqvae: the VQ-VAE (eval mode) whose encoder gives the features.
        train_dataset: the training images (``{"image", "name"}`` items), streamed once at the end of the epoch.
        batch_size: images per batch when streaming the training split.
        num_workers: data loader workers of that stream.
        candidates: training images per sample rescored by SSIM.
        max_pairs: the most pairs scored for the pairwise SSIM.
        foreground_threshold: intensity above which a pixel is brain.
        blank_fraction: the least share of brain pixels of a sample that is not blank.
        precision_recall_k: the neighbour defining the manifolds of the precision and recall.
        fd_grid: size of the grid the encoder latents are pooled to for the Fréchet distances.
        real_images: the real test images (evenly spaced) kept for the two-sample tests, and as many training
            images; twice the sample count gives the reconstruction reference (half the subjects) as many images.
        classifier: run the two-sample tests (the slowest metric: the classifier's took 43 s for the three
            comparisons at 256 images a side of 128x128, 5 folds, 10 epochs, on our 2-core CPU); False: None.
        classifier_folds: cross-validation folds of the classifier tests.
        classifier_epochs: training epochs per fold.
        bootstrap: resamples of the bootstrap intervals of the diversity and memorisation means.
        fd_bootstrap: resamples of the Fréchet distance's bootstrap interval (0: none).
        seed: seed of the classifier tests and the bootstraps.
    """

    required_output_keys = ("image", "name")

    def __init__(
        self,
        samples: Any,
        vqvae: torch.nn.Module,
        train_dataset: Dataset,
        batch_size: int = 64,
        num_workers: int = 0,
        candidates: int = 16,
        max_pairs: int = 5000,
        foreground_threshold: float = 0.05,
        blank_fraction: float = 0.01,
        precision_recall_k: int = 3,
        fd_grid: int = 4,
        real_images: int = 512,
        classifier: bool = True,
        classifier_folds: int = 5,
        classifier_epochs: int = 10,
        bootstrap: int = 1000,
        fd_bootstrap: int = 50,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.model = getattr(vqvae, "module", vqvae)
        self.train_dataset = train_dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers or 0)
        self.candidates = candidates
        self.max_pairs = max_pairs
        self.foreground_threshold = foreground_threshold
        self.blank_fraction = float(blank_fraction)
        self.precision_recall_k = int(precision_recall_k)
        self.fd_grid = fd_grid
        self.real_images = real_images
        self.classifier = bool(classifier)
        self.classifier_folds = classifier_folds
        self.classifier_epochs = classifier_epochs
        self.bootstrap = bootstrap
        self.fd_bootstrap = fd_bootstrap
        self.seed = seed
        self._num_real = 0
        # one dictionary in state.metrics under the attached name: its entries are not all numbers
        super().__init__(skip_unrolling=True, metrics_result_mode="named")

    def attach(self, engine: Engine, name: str = "generation", usage: Any = EpochWise()) -> None:  # noqa: B008
        """Attach to an evaluator as its metric ``name``: with the default, among its ``val_handlers`` (before the
        handlers that read it) rather than as a key metric, which MONAI compares between epochs and a dictionary cannot.

        Args:
            engine: the evaluator.
            name: the key of the result in ``state.metrics``.
            usage: when the metric is reset, updated and computed (every epoch).
        """
        super().attach(engine, name, usage)

    def started(self, engine: Engine) -> None:
        """Read the size of the evaluator's test split (the subsets are spread over it) and reset."""
        self._num_real = len(engine.state.dataloader.dataset)
        super().started(engine)

    def reset(self) -> None:
        """Forget the test images seen; pick the subsets of the split (its size known) to keep."""
        num_samples = len(self.samples.images) if getattr(self.samples, "images", None) is not None else 0
        self._subset = set(evenly_spaced(self._num_real, num_samples))
        self._pool = set(evenly_spaced(self._num_real, max(int(self.real_images), 1))) if self.classifier else set()
        self._test_features, self._recon_features, self._test_foreground = [], [], []
        self._test_subset, self._recon_subset = [], []
        self._pool_images, self._pool_recons, self._pool_names = [], [], []
        self._seen = 0

    @torch.no_grad()
    def update(self, output: tuple[torch.Tensor, Sequence[str]]) -> None:
        """Accumulate a batch of real test images: features of the images and of their reconstructions, and those
        of the evenly spaced subset (the diversity and memorisation references) and classifier pool.

        Args:
            output: ``(images (B, 1, S, S), names)``; None names number the images ``test_<i>``.
        """
        images, names = output
        images = _images({"image": images})
        names = [f"test_{self._seen + i}" for i in range(len(images))] if names is None else names
        device = next(self.model.parameters()).device
        self._test_features.append(encoder_features(self.model, images, self.fd_grid))
        reconstructions = self.model.reconstruct(images.to(device)).float().clamp(0, 1).cpu()
        self._recon_features.append(encoder_features(self.model, reconstructions, self.fd_grid))
        self._test_foreground.append((images > self.foreground_threshold).float().flatten(1).mean(dim=1))
        for i in range(len(images)):
            if self._seen + i in self._subset:
                self._test_subset.append(images[i])
                self._recon_subset.append(reconstructions[i])
            if self._seen + i in self._pool:
                # clones: a view would keep its whole batch alive
                self._pool_images.append(images[i].clone())
                self._pool_recons.append(reconstructions[i].clone())
                self._pool_names.append(str(names[i]))
        self._seen += len(images)

    @torch.no_grad()
    def compute(self) -> dict[str, Any]:
        """Stream the training split and measure the samples against both splits, in a JSON-serialisable dictionary."""
        samples = self.samples.images.float().cpu()
        names = list(self.samples.names)
        num_samples = len(samples)
        model, train_dataset, batch_size, seed = self.model.eval(), self.train_dataset, self.batch_size, self.seed
        max_pairs, bootstrap, fd_grid = self.max_pairs, self.bootstrap, self.fd_grid
        device = next(model.parameters()).device
        if not self._test_features:
            raise ValueError("the real test split holds no images to measure the samples against.")
        test_features_all = torch.cat(self._test_features)
        test_subset_images, recon_subset_images = torch.stack(self._test_subset), torch.stack(self._recon_subset)
        num_subset = len(test_subset_images)
        logger.info(
            f"measuring {num_samples} samples against {len(test_features_all)} real test and "
            f"{len(train_dataset)} training slices (Fréchet distance, diversity, memorisation"
            f"{', classifier two-sample tests' if self.classifier else ''})"
        )
        progress = _StageLog(4 if self.classifier else 3)
        # the classifier compares as many images a side as the smaller side holds: the samples or the real test pool
        num_real = len(self._pool_images)
        if self.classifier and min(num_samples, num_real) < RELIABLE_CLASSIFIER_SAMPLES:
            if num_samples <= num_real:
                fewest, remedy = f"{num_samples} samples", "raise --num_samples"
            else:
                fewest, remedy = f"{num_real} real test slices", "measure on a test split of more slices"
            logger.warning(
                f"only {fewest}: a classifier AUC or d' from fewer than {RELIABLE_CLASSIFIER_SAMPLES} a side is too "
                f"noisy to judge realism (see its _ci95); {remedy}"
            )

        # training split: features, the nearest training images of the samples and of the test subset (as is and
        # reconstructed), and as many evenly spaced training images as the classifier's test pool
        train_pool = set(evenly_spaced(len(train_dataset), len(self._pool_images))) if self.classifier else set()
        search = NearestImageSearch(
            torch.cat([samples, test_subset_images, recon_subset_images]), candidates=self.candidates
        )
        train_features, train_names, train_pool_images, train_pool_names = [], [], [], []
        loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
        progress(f"encoding the {len(train_dataset)} training slices and searching the nearest to each sample")
        for batch in progress.batches(loader, "training slices"):
            images = _images(batch)
            train_features.append(encoder_features(model, images, fd_grid))
            search.update(images)
            seen = len(train_names)
            batch_train_names = [str(n) for n in batch.get("name", [f"train_{seen + i}" for i in range(len(images))])]
            for i in range(len(images)):
                if seen + i in train_pool:
                    train_pool_images.append(images[i].clone())
                    train_pool_names.append(batch_train_names[i])
            train_names += batch_train_names
        train_features_all = torch.cat(train_features)

        def fetch(indices: list[int]) -> torch.Tensor:
            return torch.stack([_images({"image": train_dataset[i]["image"]}) for i in indices])

        progress("rescoring the nearest training slices by SSIM; Fréchet distances, diversity")
        nearest_ssim, nearest_index = search.best(fetch)
        sample_nearest, test_nearest, recon_nearest = nearest_ssim.split([num_samples, num_subset, num_subset])
        generated_features = torch.cat([encoder_features(model, chunk, fd_grid) for chunk in samples.split(batch_size)])
        train_subset_features = train_features_all[evenly_spaced(len(train_features_all), num_samples)]

        blank = (samples > self.foreground_threshold).float().flatten(1).mean(dim=1) < self.blank_fraction
        # an empty sample "matches" an empty training slice at SSIM ~1: no copy of a brain
        kept_nearest = sample_nearest[~blank]
        memorisation = _stats(kept_nearest)
        precision_recall = _precision_recall_entries(
            test_features_all, generated_features, train_subset_features, self.precision_recall_k, self.bootstrap, seed
        )
        progress(
            "bootstrap intervals and pairwise SSIM"
            + (", then the classifier two-sample tests" if self.classifier else "")
        )
        diversity, diversity_ci95 = mean_pairwise_ssim(samples, max_pairs=max_pairs, seed=seed, bootstrap=bootstrap)
        metrics: dict[str, Any] = {
            "num_samples": num_samples,
            "num_train_images": len(train_features_all),
            "num_test_images": len(test_features_all),
            "num_test_subset_images": num_subset,
            "fd_feature_space": (
                f"VQ-VAE encoder latents (before quantisation) average-pooled to {fd_grid}x{fd_grid}, "
                f"{generated_features.shape[1]} features"
            ),
            "fd_generated_vs_test": frechet_distance(generated_features, test_features_all),
            "fd_generated_vs_test_ci95": bootstrap_frechet_interval(
                generated_features, test_features_all, self.fd_bootstrap, seed
            ),
            "fd_train_vs_test": frechet_distance(train_features_all, test_features_all),
            "fd_train_subset_vs_test": frechet_distance(train_subset_features, test_features_all),
            "fd_reconstructed_test_vs_test": frechet_distance(torch.cat(self._recon_features), test_features_all),
            "diversity_ssim_generated": diversity,
            "diversity_ssim_generated_ci95": diversity_ci95,
            "diversity_ssim_test": mean_pairwise_ssim(test_subset_images, max_pairs=max_pairs),
            "diversity_ssim_reconstructed_test": mean_pairwise_ssim(recon_subset_images, max_pairs=max_pairs),
            "memorisation_ssim_mean": memorisation["mean"],
            "memorisation_ssim_mean_ci95": bootstrap_mean_interval(kept_nearest, bootstrap, seed),
            "memorisation_ssim_max": memorisation["max"],
            "memorisation_ssim_test_mean": _stats(test_nearest)["mean"],
            "memorisation_ssim_reconstructed_test_mean": _stats(recon_nearest)["mean"],
            "memorisation_candidates": min(self.candidates, len(train_features_all)),
            "blank_samples": int(blank.sum()),
            "memorisation_per_sample": [
                {
                    "sample": name,
                    "nearest_train": train_names[int(index)] if index >= 0 else None,
                    "ssim": float(score),
                    "blank": bool(is_blank),
                }
                for name, score, index, is_blank in zip(
                    names, sample_nearest.tolist(), nearest_index[:num_samples].tolist(), blank.tolist(), strict=True
                )
            ],
            **precision_recall,
            "foreground_fraction_generated": float((samples > self.foreground_threshold).float().mean()),
            "foreground_fraction_test": float(torch.cat(self._test_foreground).mean()),
        }
        if self.classifier:
            progress("classifier two-sample tests (generated vs test, train vs test, reconstructed vs test)")
        metrics.update(
            two_sample_entries(
                samples,
                self._pool_images,
                self._pool_recons,
                self._pool_names,
                train_pool_images,
                train_pool_names,
                self.classifier,
                self.classifier_folds,
                self.classifier_epochs,
                seed,
                device,
            )
        )
        return metrics


def _precision_recall_entries(
    test: torch.Tensor, generated: torch.Tensor, train_subset: torch.Tensor, k: int, bootstrap: int, seed: int
) -> dict[str, Any]:
    """The ``precision_*`` / ``recall_*`` entries of :class:`GenerationQuality` (None where a set is too small)."""
    entries: dict[str, Any] = {"precision_recall_k": int(k)}
    for name, features in (("generated", generated), ("train_subset", train_subset)):
        try:
            result = knn_precision_recall(test, features, k=k, bootstrap=bootstrap, seed=seed)
        except ValueError:
            result = {"precision": None, "recall": None, "precision_ci95": None, "recall_ci95": None}
        entries[f"precision_{name}"] = result["precision"]
        entries[f"recall_{name}"] = result["recall"]
        if name == "generated":
            entries["precision_generated_ci95"] = result["precision_ci95"]
            entries["recall_generated_ci95"] = result["recall_ci95"]
    return entries


def real_image_batch(engine: Engine, batch: dict[str, Any]) -> dict[str, Any]:
    """The iteration of an evaluator of :class:`GenerationQuality`: a batch of real images as its output.

    Args:
        engine: the evaluator.
        batch: a collated batch of ``{"image", "name"}`` items (``name`` may be missing).

    Returns:
        ``{"image": float (B, 1, S, S), "name": [str] or None}``.
    """
    return {"image": _images(batch), "name": batch.get("name")}
