"""Image batches travel as uint8 and are normalised on the device: the model sees what timm's
float pipeline (ToTensor + Normalize per image) would have given it, in the layout it wants."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tlsearch.train.batches import ToDevice

CONFIG = {
    "input_size": (3, 24, 24),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 31, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_batches_normalise_on_the_device_as_timms_float_pipeline_does(channels_last: bool) -> None:
    from timm.data import create_transform

    from tlsearch.data.datasets import ImageDataset

    as_float = create_transform(**CONFIG, is_training=False)
    as_uint8 = create_transform(**CONFIG, is_training=False, use_prefetcher=True)
    pictures = images(4)
    expected = torch.stack([as_float(p) for p in pictures])
    batch, targets = ImageDataset.collate([(as_uint8(p), i) for i, p in enumerate(pictures)])
    assert batch.dtype == torch.uint8 and targets.tolist() == [0, 1, 2, 3]

    moved = ToDevice(torch.device("cpu"), CONFIG, channels_last=channels_last)(batch)
    assert moved.dtype == torch.float32 and moved.shape == expected.shape
    assert moved.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-5)


def test_text_and_feature_batches_move_as_they_are() -> None:
    to_device = ToDevice(torch.device("cpu"), CONFIG, channels_last=True)
    text = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5)}
    assert {k: v.dtype for k, v in to_device(text).items()} == {k: v.dtype for k, v in text.items()}
    features = torch.randn(2, 8)
    assert torch.equal(to_device(features), features)  # float rows of a feature cache


def test_uint8_batches_without_a_mean_and_std_are_refused() -> None:
    with pytest.raises(ValueError, match="mean and std"):
        ToDevice(torch.device("cpu"), preprocessing=None)(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
