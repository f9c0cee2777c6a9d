from __future__ import annotations

from dataclasses import replace

from tlsearch.models.sources import LoadedModel
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, layerwise
from tlsearch.strategies.lp_ft import LpFtKnobs


def apply(loaded: LoadedModel, knobs: LpFtKnobs, common: CommonKnobs) -> Prepared:
    prepared = layerwise(
        loaded,
        {name for name, _ in loaded.model.named_parameters()},
        head_lr=knobs.head_lr,
        backbone_lr=knobs.backbone_lr,
        layer_decay=knobs.layer_decay,
        weight_decay=common.weight_decay,
    )
    return replace(prepared, head_probe_epochs=knobs.probe_epochs)  # run by tlsearch.train.head_probe
