"""The whole backbone is the frozen prefix: its output can be cached (feature boundary HEAD)."""

from __future__ import annotations

from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import HEAD
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, layerwise
from tlsearch.strategies.linear_probe import LinearProbeKnobs


def apply(loaded: LoadedModel, knobs: LinearProbeKnobs, common: CommonKnobs) -> Prepared:
    return layerwise(
        loaded,
        set(loaded.layers.head_params),
        head_lr=knobs.head_lr,
        backbone_lr=0.0,
        layer_decay=1.0,
        weight_decay=common.weight_decay,
        feature_boundary=HEAD,
    )
