"""Layer maps: bottom-to-top numbering for timm and HF models, and equivalence with timm's own
param_groups_layer_decay."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsearch.models import build_model
from tlsearch.spec.model import ModelSpec


def vision(name: str):  # type: ignore[no-untyped-def]
    return build_model(
        ModelSpec(source="timm", name=name, task="image-classification", pretrained=False), 4, weights=False
    )


def test_vit_layer_map() -> None:
    layers = vision("test_vit").layers
    assert layers.num_blocks == 6
    assert layers.layer_of["cls_token"] == 0 and layers.layer_of["patch_embed.proj.weight"] == 0
    assert layers.layer_of["blocks.0.attn.qkv.weight"] == 1
    assert layers.layer_of["blocks.5.mlp.fc2.weight"] == 6
    assert layers.layer_of["norm.weight"] == 6  # final norm shares the top block's rate
    assert layers.head_params == {"head.weight", "head.bias"}
    assert layers.block_prefixes == tuple(f"blocks.{i}" for i in range(6))
    assert {"cls_token", "pos_embed"} <= layers.no_weight_decay


def test_cnn_layer_map_uses_timm_blocks() -> None:
    layers = vision("test_efficientnet").layers
    assert layers.layer_of["conv_stem.weight"] == 0
    assert layers.layer_of["conv_head.weight"] == layers.num_blocks  # head conv sits on top
    assert layers.head_params == {"classifier.weight", "classifier.bias"}
    assert all(p.startswith("blocks.") for p in layers.block_prefixes)


@pytest.mark.parametrize("name", ["test_vit", "test_efficientnet", "test_convnext"])
def test_scales_equal_timms_param_groups_layer_decay(name: str) -> None:
    """timm scales layer i by d ** (layer_max - i) with the head alone on top; our rule gives the top
    block 1.0 and the head its own LR, i.e. timm's lr_scale divided by d for every backbone tensor."""
    import timm
    from timm.optim import param_groups_layer_decay

    decay = 0.7
    model = timm.create_model(name, pretrained=False, num_classes=4)
    loaded = build_model(
        ModelSpec(source="timm", name=name, task="image-classification", pretrained=False), 4
    )
    layers = loaded.layers
    names = {id(p): n for n, p in model.named_parameters()}
    necks = set()
    for group in param_groups_layer_decay(model, layer_decay=decay):
        for param in group["params"]:
            n = names[id(param)]
            if n in layers.head_params:
                continue
            if group["lr_scale"] == 1.0:  # timm puts necks (fc_norm...) with the head
                necks.add(n)
                assert layers.layer_of[n] == layers.num_blocks
                continue
            assert layers.lr_scale(n, decay) == pytest.approx(group["lr_scale"] / decay), n


def test_hf_layer_map(tiny_bert: Path) -> None:
    loaded = build_model(
        ModelSpec(source="hf", name=str(tiny_bert), task="text-classification"), 3, weights=False
    )
    layers = loaded.layers
    assert layers.num_blocks == 2
    assert layers.layer_of["bert.embeddings.word_embeddings.weight"] == 0
    assert layers.layer_of["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert layers.layer_of["bert.encoder.layer.1.output.dense.weight"] == 2
    assert layers.layer_of["bert.pooler.dense.weight"] == 2  # pooler above the blocks: top rate
    assert layers.head_params == {"classifier.weight", "classifier.bias"}
    assert layers.top_blocks(1) == {n for n, lid in layers.layer_of.items() if lid == 2}
