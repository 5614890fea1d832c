"""The classifier and texture two-sample tests of :class:`GenerationQuality`'s three comparisons, as report entries."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from .realism import CI95_METHOD, classifier_two_sample_test, slice_groups
from .report import COMPARISONS, TWO_SAMPLE_ENTRIES
from .texture import texture_two_sample_test

logger = logging.getLogger(__name__)


def two_sample_entries(
    samples: torch.Tensor,
    test_images: list[torch.Tensor],
    test_recons: list[torch.Tensor],
    test_names: list[str],
    train_images: list[torch.Tensor],
    train_names: list[str],
    enabled: bool,
    folds: int,
    epochs: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """The ``classifier_*`` and ``texture_*`` entries of :class:`GenerationQuality` (None where not measured)."""
    entries: dict[str, Any] = {
        "classifier": {
            "enabled": bool(enabled),
            "folds": int(folds),
            "epochs": int(epochs),
            "seed": int(seed),
            "num_test_pool_images": len(test_images),
            "num_train_pool_images": len(train_images),
            "ci95_method": None,
        }
    }
    notes: list[str] = []
    # each test's results (classifier, texture) by comparison, where measured
    results: dict[str, dict[str, dict[str, Any]]] = {test: {} for test in TWO_SAMPLE_ENTRIES}
    if enabled and test_images:
        test, recons = torch.stack(test_images), torch.stack(test_recons)
        train = torch.stack(train_images) if train_images else test[:0]
        test_groups = slice_groups(test_names)
        # the images of two halves of the subjects (sorted subjects taken alternately)
        first_half = set(sorted(set(test_groups))[0::2])
        half_a = [i for i, group in enumerate(test_groups) if group in first_half]
        half_b = [i for i, group in enumerate(test_groups) if group not in first_half]
        runs = {
            "generated_vs_test": (samples, test, None, test_groups),
            "train_vs_test": (train, test, slice_groups(train_names), test_groups),
            "reconstructed_vs_test": (
                recons[half_a], test[half_b], [test_groups[i] for i in half_a], [test_groups[i] for i in half_b]
            ),
        }
        started = time.perf_counter()
        # at most as many images per side as samples, so the references are measured at the samples' count
        shared = {"folds": folds, "seed": seed, "max_per_side": len(samples)}
        for number, (name, sides) in enumerate(runs.items(), start=1):
            logger.info(f"measuring: classifier two-sample test {number}/{len(runs)}: {name.replace('_', ' ')}")
            try:
                results["classifier"][name] = classifier_two_sample_test(*sides, epochs=epochs, device=device, **shared)
                # the same sides and folds, texture statistics alone (see the texture module)
                results["texture"][name] = texture_two_sample_test(*sides, **shared)
            except ValueError as error:
                notes.append(f"{name}: not measured: {error}")
                logger.warning(f"classifier two-sample test {name} not measured: {error}")
        entries["classifier"]["ci95_method"] = CI95_METHOD if results["classifier"] else None
        entries["classifier"]["seconds"] = time.perf_counter() - started
    for test, by_comparison in results.items():
        for name in COMPARISONS:
            for key, (field, _) in TWO_SAMPLE_ENTRIES[test].items():
                entries[key.format(name=name)] = by_comparison[name][field] if name in by_comparison else None
    entries["classifier_notes"] = notes
    return entries
