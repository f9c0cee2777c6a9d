"""Hugging Face image classifiers through the hf source: a tiny ViT saved with save_pretrained (its image
processor beside it) loaded by path with a new head, its layer map and LoRA targets, and image
processors turned into timm data configs that give the processor's own pixels. (Every strategy on it:
tests/strategies; its tails: tests/models/test_tails.py; trials: tests/train.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tlsearch.errors import UserInputError
from tlsearch.models import build_model, resolve_lora_targets
from tlsearch.models.hf_source import image_data_config
from tlsearch.models.sources import SOURCES
from tlsearch.spec.model import ModelSpec
from tlsearch.train.batches import ToDevice


def vit_spec(tiny_vit: Path, **kw: Any) -> ModelSpec:
    return ModelSpec(source="hf", name=str(tiny_vit), task="image-classification", **kw)


def test_loads_by_path_with_a_new_head_and_the_processors_preprocessing(tiny_vit: Path) -> None:
    from transformers import AutoModelForImageClassification

    saved = AutoModelForImageClassification.from_pretrained(tiny_vit)
    loaded = build_model(vit_spec(tiny_vit), num_classes=3)
    assert type(loaded.model).__name__ == "ViTForImageClassification" and loaded.source is SOURCES.get("hf")
    for name, tensor in saved.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    assert loaded.head_modules == ("classifier",) and loaded.model.classifier.out_features == 3
    # The ViTImageProcessor saved beside the model (make_tiny_vit), as timm's eval transform takes it.
    assert loaded.preprocessing == {
        "input_size": (3, 32, 32),
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    logits = loaded.source.logits(loaded.model.eval(), torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3)

    probe = build_model(vit_spec(tiny_vit), num_classes=3, weights=False)
    assert next(probe.model.parameters()).device.type == "meta" and probe.layers.num_blocks == 2


def test_image_size_is_the_models_own(tiny_vit: Path, tiny_bert: Path) -> None:
    assert build_model(vit_spec(tiny_vit, image_size=32), 3, weights=False).preprocessing["input_size"] == (
        3,
        32,
        32,
    )
    with pytest.raises(UserInputError, match="takes images of 32 pixels"):
        build_model(vit_spec(tiny_vit, image_size=48), 3, weights=False)
    with pytest.raises(UserInputError, match="cannot load Hugging Face model"):  # a text model
        build_model(vit_spec(tiny_bert), 3, weights=False)


def test_layer_map_numbers_the_transformer_blocks(tiny_vit: Path) -> None:
    layers = build_model(vit_spec(tiny_vit), 3, weights=False).layers
    assert layers.num_blocks == 2 and layers.block_prefixes == ("vit.layers.0", "vit.layers.1")
    assert layers.layer_of["vit.embeddings.cls_token"] == 0
    assert layers.layer_of["vit.embeddings.patch_embeddings.projection.weight"] == 0
    assert {layers.layer_of[n] for n in layers.layer_of if n.startswith("vit.layers.0.")} == {1}
    assert {layers.layer_of[n] for n in layers.layer_of if n.startswith("vit.layers.1.")} == {2}
    assert layers.layer_of["vit.layernorm.weight"] == 2  # the final norm shares the top block's rate
    assert layers.head_params == {"classifier.weight", "classifier.bias"}


def test_lora_presets_on_hf_vit(tiny_vit: Path) -> None:
    loaded = build_model(vit_spec(tiny_vit), 3, weights=False)

    def first_block(preset: str) -> set[str]:
        return {t.removeprefix("vit.layers.0.") for t in resolve_lora_targets(loaded, preset) if ".0." in t}

    attention = {f"attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert first_block("attention") == attention
    assert first_block("attention_mlp") == attention | {"mlp.fc1", "mlp.fc2"}
    assert "classifier" not in resolve_lora_targets(loaded, "all_linear")


def processors() -> dict[str, Any]:
    from transformers import BeitImageProcessor, CLIPImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    return {
        # resize to an exact size
        "vit": ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6]),
        # resize the shortest edge, then centre-crop
        "clip": CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
        # ConvNeXt's crop_pct: the shortest edge to int(32 / 0.875), then a 32 x 32 crop ...
        "convnext": ConvNextImageProcessor(size={"shortest_edge": 32}),
        # ... and from 384 up a warp without a crop
        "convnext-384": ConvNextImageProcessor(size={"shortest_edge": 384}),
        # resize to an exact size, then centre-crop
        "beit": BeitImageProcessor(
            size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True
        ),
        # another rescale factor, folded into the mean and std
        "rescale": ViTImageProcessor(
            size={"height": 32, "width": 32},
            rescale_factor=1 / 127.5,
            image_mean=[1.0] * 3,
            image_std=[1.0] * 3,
        ),
    }


@pytest.mark.parametrize("name", list(processors()))
def test_the_data_config_gives_the_image_processors_pixels(name: str) -> None:
    """timm's eval transform with the derived config, normalised as ToDevice does, equals the image
    processor's output up to the resampling's rounding: no pixel more than two uint8 levels off, and
    most not at all."""
    from PIL import Image
    from timm.data import create_transform

    processor = processors()[name]
    config = image_data_config(processor)
    transform = create_transform(**config, is_training=False, use_prefetcher=True)
    to_device = ToDevice(torch.device("cpu"), config)
    rng = np.random.default_rng(0)
    for shape in ((32, 32), (48, 64), (70, 50)):
        # Smooth, as photographs are (pixel noise exaggerates how PIL's and torchvision's filters differ).
        coarse = rng.integers(0, 256, (shape[0] // 6 + 1, shape[1] // 6 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(shape[::-1], Image.Resampling.BILINEAR)
        ours = to_device(transform(image)[None])
        theirs = processor(image, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape, shape
        level = 1 / 255 / min(config["std"])  # one uint8 level, normalised
        assert (ours - theirs).abs().max().item() <= 2.01 * level, shape
        assert (ours - theirs).abs().mean().item() <= 0.25 * level, shape


def test_an_image_processor_without_a_fixed_size_is_refused() -> None:
    from transformers import ViTImageProcessor

    with pytest.raises(UserInputError, match="no timm equivalent"):
        image_data_config(ViTImageProcessor(size={"longest_edge": 64}))
    with pytest.raises(UserInputError, match="does not resize"):
        image_data_config(ViTImageProcessor(do_resize=False))
