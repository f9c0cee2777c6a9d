"""Training-image augmentation (`strategies.common.augmentation`): timm's training transforms, giving
uint8 pixels like the deterministic ones (the device normalises them). Only the training split gets
them; validation and test keep the deterministic resize and centre crop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# RandAugment as timm names it: two ops a time at magnitude 9 (std 0.5), stronger as it grows.
RANDAUGMENT = "rand-m9-mstd0.5-inc1"
# timm's posterize at a high magnitude keeps 0 bits, which Pillow 10+ refuses (ValueError); its op
# list for `inc1` without it.
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "SolarizeIncreasing", "SolarizeAdd",
                   "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                   "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")  # fmt: skip
CROP_SCALE = (0.5, 1.0)  # of the image's area: small data sets lose too much to timm's 0.08


def training_transform(preprocessing: dict[str, Any], augmentation: str) -> Callable[[Any], torch.Tensor]:
    """`light`: a random resized crop and horizontal flips; `randaugment`: the same plus RandAugment."""
    from timm.data import create_transform
    from timm.data.auto_augment import rand_augment_transform
    from torchvision import transforms

    if augmentation not in ("light", "randaugment"):
        raise ValueError(f"no training transform for augmentation {augmentation!r}")
    config = {
        k: preprocessing[k] for k in ("input_size", "interpolation", "mean", "std") if k in preprocessing
    }
    crop_flip, _, to_pixels = create_transform(
        **config,
        is_training=True,
        scale=CROP_SCALE,
        hflip=0.5,
        # None turns timm's colour jitter off (its annotation says float; its code takes None).
        color_jitter=None,  # type: ignore[arg-type]
        use_prefetcher=True,
        separate=True,
    )
    steps = [crop_flip]
    if augmentation == "randaugment":
        size = min(config["input_size"][1:])
        hparams = {  # as timm's own training transform sets them
            "translate_const": int(size * 0.45),
            "img_mean": tuple(min(255, round(255 * x)) for x in config.get("mean", (0.5, 0.5, 0.5))),
        }
        steps.append(rand_augment_transform(RANDAUGMENT, hparams, transforms=list(RANDAUGMENT_OPS)))
    return transforms.Compose([*steps, to_pixels])
