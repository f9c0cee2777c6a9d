from __future__ import annotations

from tlsearch.models.sources import LoadedModel
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, layerwise
from tlsearch.strategies.full import FullKnobs


def apply(loaded: LoadedModel, knobs: FullKnobs, common: CommonKnobs) -> Prepared:
    return layerwise(
        loaded,
        {name for name, _ in loaded.model.named_parameters()},
        head_lr=knobs.head_lr,
        backbone_lr=knobs.backbone_lr,
        layer_decay=knobs.layer_decay,
        weight_decay=common.weight_decay,
    )
