from __future__ import annotations

from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import block_boundary
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, layerwise
from tlsearch.strategies.partial import PartialKnobs


def apply(loaded: LoadedModel, knobs: PartialKnobs, common: CommonKnobs) -> Prepared:
    layers, depth = loaded.layers, knobs.unfreeze_depth
    if depth > layers.num_blocks:
        raise ValueError(f"unfreeze_depth must be ≤ the model's {layers.num_blocks} blocks, but got {depth}")
    return layerwise(
        loaded,
        layers.top_blocks(depth) | layers.head_params,
        head_lr=knobs.head_lr,
        backbone_lr=knobs.backbone_lr,
        layer_decay=knobs.layer_decay,
        weight_decay=common.weight_decay,
        # The stem and the blocks below the top `depth` are frozen and in eval mode: their output,
        # the input of the lowest trained block, can be cached.
        feature_boundary=block_boundary(layers.num_blocks - depth),
    )
