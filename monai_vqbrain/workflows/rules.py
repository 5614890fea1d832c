"""The rules between settings, declared once: what validation checks, ``run help`` lists and the reference documents.

Each value may be allowed on its own (the settings schema judges that, key by key), yet a run could not do what
the values ask together: :data:`SETTING_RULES` is the one table of those rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SettingRule:
    """A rule between settings.

    Args:
        name: what the rule is called in code (``crop_fits_image``).
        keys: the settings it relates; ``run help`` lists it when the run has the first of them.
        text: the rule as ``run help`` and the reference state it.
        breach: ``breach(settings, max_epochs_key)``: the one-line error when ``settings`` break the rule, else
            None; settings a run does not have are not checked.
    """

    name: str
    keys: tuple[str, ...]
    text: str
    breach: Callable[[Mapping[str, Any], str | None], str | None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _multiple_of_downsampling(settings: Mapping[str, Any], max_epochs_key: str | None) -> str | None:
    factor = settings.get("downsample_factor")
    for key in ("image_size", "train_crop_size"):
        size = settings.get(key)
        if _is_int(factor) and factor > 1 and _is_int(size) and size % factor:
            return (
                f"{key} must be a multiple of {factor} (the network halves the image {int(math.log2(factor))} "
                f"times), got {size}; e.g. {max(factor, size // factor * factor)}."
            )
    return None


def _fractions_leave_training_data(settings: Mapping[str, Any], max_epochs_key: str | None) -> str | None:
    val, test = settings.get("val_fraction"), settings.get("test_fraction")
    if _is_number(val) and _is_number(test) and val + test >= 1:
        return f"val_fraction + test_fraction must be below 1 (the rest is the training split), got {val} + {test}."
    return None


def _crop_fits_image(settings: Mapping[str, Any], max_epochs_key: str | None) -> str | None:
    image, crop = settings.get("image_size"), settings.get("train_crop_size")
    if _is_int(image) and _is_int(crop) and crop > image:
        return (
            f"train_crop_size must be at most image_size ({image}): the crop is taken from the resized image, "
            f"got {crop}; set it to {image} or less, or 0 to train on whole images."
        )
    return None


def _samples_fit_the_bound(settings: Mapping[str, Any], max_epochs_key: str | None) -> str | None:
    count, most = settings.get("num_samples"), settings.get("max_num_samples")
    if _is_int(count) and _is_int(most) and count > most:
        return (
            f"num_samples must be at most max_num_samples ({most}), got {count!r}: every generated image is kept in "
            f"memory until the run ends; pass --max_num_samples {count} if this machine has the memory, or generate "
            f"in several runs with other --sample_seed values."
        )
    return None


def _training_validates(settings: Mapping[str, Any], max_epochs_key: str | None) -> str | None:
    epochs, interval = settings.get(max_epochs_key) if max_epochs_key else None, settings.get("val_interval")
    if _is_int(epochs) and _is_int(interval) and interval > epochs:
        return (
            f"val_interval ({interval}) is larger than {max_epochs_key} ({epochs}): the run would never validate and "
            f"so never save its best model; set --val_interval {epochs} or less, or --{max_epochs_key} {interval} "
            f"or more."
        )
    return None


#: every rule between settings, in the order they are checked
SETTING_RULES: tuple[SettingRule, ...] = (
    SettingRule(
        "multiple_of_downsampling",
        ("image_size", "train_crop_size"),
        "`image_size` and `train_crop_size` are multiples of the network's downsampling factor "
        "(2 ** len(network_def#channels))",
        _multiple_of_downsampling,
    ),
    SettingRule(
        "fractions_leave_training_data",
        ("val_fraction", "test_fraction"),
        "`val_fraction + test_fraction` is below 1 (the rest is the training split)",
        _fractions_leave_training_data,
    ),
    SettingRule(
        "crop_fits_image",
        ("train_crop_size", "image_size"),
        "`train_crop_size` is at most `image_size` (0 or null: whole slices)",
        _crop_fits_image,
    ),
    SettingRule(
        "samples_fit_the_bound",
        ("num_samples", "max_num_samples"),
        "`num_samples` is at most `max_num_samples` (every generated image is kept in memory until the run ends)",
        _samples_fit_the_bound,
    ),
    SettingRule(
        "training_validates",
        ("val_interval", "max_epochs", "prior_max_epochs"),
        "`val_interval` is at most the training run's epochs (`max_epochs`, or `prior_max_epochs` for the prior): "
        "a run that never validates never saves its best model",
        _training_validates,
    ),
)


def broken_rule(settings: Mapping[str, Any], max_epochs_key: str | None = None) -> str | None:
    """The one-line error of the first rule of :data:`SETTING_RULES` that ``settings`` break, else None.

    Args:
        settings: setting name to its (parsed) value, with ``downsample_factor`` when the network's is known.
        max_epochs_key: the setting holding the training run's epochs; None for a run that does not train.
    """
    for rule in SETTING_RULES:
        message = rule.breach(settings, max_epochs_key)
        if message is not None:
            return message
    return None
