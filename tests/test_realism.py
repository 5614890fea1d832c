"""The classifier two-sample test of realism: chance for one distribution, near 1 for obviously different images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import brain_like_slice

from monai_vqbrain.prior.realism import (
    RealismClassifier,
    assign_folds,
    classifier_two_sample_test,
    held_out_separation,
    slice_groups,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
# tiny settings: the whole file must stay fast on a busy 2-core machine
FAST = {"folds": 3, "epochs": 4, "batch_size": 16}


def brains(count: int, first_seed: int) -> torch.Tensor:
    """``count`` brain-like 32x32 slices in [0, 1], each with its own seed."""
    slices = np.stack([brain_like_slice(SIZE, first_seed + i) for i in range(count)])
    return torch.as_tensor(slices, dtype=torch.float32)[:, None] / 255.0


def shuffled_patches(images: torch.Tensor, patch: int = 8, seed: int = 0) -> torch.Tensor:
    """The images with their ``patch`` x ``patch`` tiles permuted: what decoding shuffled code maps looks like."""
    tiles = F.unfold(images, patch, stride=patch)
    order = torch.randperm(tiles.shape[-1], generator=torch.Generator().manual_seed(seed))
    return F.fold(tiles[..., order], images.shape[-2:], patch, stride=patch)


def blurred(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), 5, stride=1)


def test_slice_groups_parse_subjects_and_fall_back_to_one_group_per_image():
    names = ["case_012_slice_3.nii.png", "some/dir/case_012_slice_10.nii.png", "case_013_slice_0.nii.png",
             "OAS2_0004_MR1_T1.nii.gz#slice40", "OAS2_0004_MR2_T1.nii.gz#slice41", "sub-06_T1w.nii.gz#slice3",
             "sample_001.png", "sample_001.png"]
    groups = slice_groups(names)
    assert groups[:3] == ["case_012", "case_012", "case_013"]
    assert groups[3] == groups[4] == "OAS2_0004"  # two sessions of one subject
    assert groups[5] == "sub-06_T1w"
    assert groups[6] != groups[7]  # unknown layout: never grouped by accident, even with equal names


def test_folds_keep_every_subject_on_one_side_of_each_fold_and_are_stratified():
    rng = np.random.default_rng(0)
    sides = np.repeat([0, 1], [37, 23])
    groups = [f"a{g}" for g in rng.integers(0, 9, 37)] + [f"b{g}" for g in rng.integers(0, 7, 23)]
    groups[0] = groups[-1] = "shared"  # one subject with images on both sides
    folds = assign_folds(sides, groups, folds=4, seed=1)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    for group in set(groups):
        assert len({int(f) for f, g in zip(folds, groups, strict=True) if g == group}) == 1, group
    for fold in range(4):
        assert (sides[folds == fold] == 0).any() and (sides[folds == fold] == 1).any()
    # ungrouped: one image per group, so each side is spread evenly (within one image) over the folds
    folds = assign_folds(sides, None, folds=4, seed=1)
    for side in (0, 1):
        counts = np.bincount(folds[sides == side], minlength=4)
        assert counts.max() - counts.min() <= 1, counts
    assert np.array_equal(folds, assign_folds(sides, None, folds=4, seed=1))


def test_folds_refuse_too_few_subjects_per_side():
    with pytest.raises(ValueError, match="side 1 has images of 2 subject"):
        assign_folds([0, 0, 0, 1, 1, 1], ["a", "b", "c", "d", "d", "e"], folds=3)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        assign_folds([0, 1], None, folds=1)


def test_same_distribution_scores_near_chance():
    result = classifier_two_sample_test(brains(36, 0), brains(36, 1000), **FAST)
    assert abs(result["auc"] - 0.5) < 0.2, result
    assert result["auc_ci95"][0] <= 0.5 + 0.05 and result["auc_ci95"][0] <= result["auc"] <= result["auc_ci95"][1]


@pytest.mark.parametrize("corrupt", ["noise", "blurred", "shuffled"])
def test_obviously_wrong_images_are_told_apart(corrupt):
    real = brains(36, 0)
    others = brains(36, 1000)
    fake = {
        "noise": torch.rand(36, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)),
        "blurred": blurred(others),
        "shuffled": shuffled_patches(others),
    }[corrupt]
    result = classifier_two_sample_test(fake, real, **FAST)
    assert result["auc"] > 0.9, result
    assert len(result["auc_folds"]) == FAST["folds"] and result["auc_std"] >= 0


def test_result_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    first, second = brains(24, 0), blurred(brains(24, 500))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = classifier_two_sample_test(first, second, **FAST, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    again = classifier_two_sample_test(first, second, **FAST, seed=3)
    other = classifier_two_sample_test(first, second, **FAST, seed=4)
    assert one["auc_folds"] == again["auc_folds"]
    assert one["auc_folds"] != other["auc_folds"]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_runs_where_gradients_are_off(mode):
    with mode():
        first, second = brains(12, 0), blurred(brains(12, 500))
        result = classifier_two_sample_test(first, second, folds=2, epochs=1)
    assert 0.0 <= result["auc"] <= 1.0


def test_sides_are_balanced_and_capped():
    result = classifier_two_sample_test(brains(30, 0), brains(45, 100), **FAST)
    assert result["num_first"] == result["num_second"] == 30
    capped = classifier_two_sample_test(brains(30, 0), brains(45, 100), **FAST, max_per_side=12)
    assert capped["num_first"] == capped["num_second"] == 12
    # 2 x 25 images in 2 folds: a training set of 26 images, so a last batch of one (batch norm cannot take it)
    odd = classifier_two_sample_test(brains(25, 0), brains(25, 100), folds=2, epochs=1, batch_size=5)
    assert odd["num_first"] == 25


def test_grouped_subjects_with_too_few_subjects_are_refused():
    images = brains(12, 0)
    with pytest.raises(ValueError, match="fewer than the 3 folds"):
        classifier_two_sample_test(images, brains(12, 100), second_groups=["x", "y"] * 6, **FAST)


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        (torch.zeros(8, SIZE, SIZE), torch.zeros(8, 1, SIZE, SIZE), r"first must be .*\(N, 1, S, S\)"),
        (torch.zeros(8, 1, SIZE, SIZE), torch.zeros(8, 3, SIZE, SIZE), r"second must be"),
        (torch.zeros(8, 1, SIZE, 16), torch.zeros(8, 1, SIZE, SIZE), r"first must be"),
        (torch.zeros(8, 1, SIZE, SIZE), torch.zeros(8, 1, 16, 16), "one size"),
        (torch.zeros(2, 1, SIZE, SIZE), torch.zeros(8, 1, SIZE, SIZE), "too few images for 3-fold"),
        (torch.full((8, 1, SIZE, SIZE), float("nan")), torch.zeros(8, 1, SIZE, SIZE), "non-finite"),
    ],
)
def test_bad_inputs_are_clear_errors(first, second, match):
    with pytest.raises(ValueError, match=match):
        classifier_two_sample_test(first, second, **FAST)


def test_bad_settings_are_clear_errors():
    images = brains(8, 0)
    with pytest.raises(ValueError, match="epochs must be"):
        classifier_two_sample_test(images, images, folds=2, epochs=0)
    with pytest.raises(ValueError, match="first_groups must have one entry per image"):
        classifier_two_sample_test(images, images, first_groups=["a"], folds=2)


def test_classifier_takes_any_size_and_is_small():
    network = RealismClassifier().eval()
    for size in (30, 32, 128):
        assert network(torch.rand(2, 1, size, size)).shape == (2,)
    assert sum(p.numel() for p in network.parameters()) < 100_000


def test_separation_keeps_ranking_where_the_auc_saturates():
    real, others = brains(36, 0), brains(36, 1000)
    same = classifier_two_sample_test(others, real, **FAST)
    blur = classifier_two_sample_test(blurred(others), real, **FAST)
    noise = classifier_two_sample_test(torch.rand(36, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)), real, **FAST)
    # both corruptions are told apart perfectly: the AUC cannot say which is worse; d' can, with intervals apart
    assert blur["auc"] > 0.95 and noise["auc"] > 0.95
    assert abs(same["dprime"]) < 1.0 and same["dprime_ci95"][0] < 0 < same["dprime_ci95"][1]
    assert same["dprime_ci95"][1] < blur["dprime_ci95"][0] and blur["dprime_ci95"][1] < noise["dprime_ci95"][0]
    assert len(noise["dprime_folds"]) == FAST["folds"] and noise["dprime_std"] >= 0


def test_separation_is_scale_free_and_zero_for_identical_scores():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([-1.0, 0.0, 1.0, 1.0, 2.0, 3.0])
    assert held_out_separation(scores, labels) == pytest.approx(2.0)  # gap 2, spread 1
    assert held_out_separation(scores * 10 + 3, labels) == pytest.approx(2.0)
    assert held_out_separation(torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1])) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        held_out_separation(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
