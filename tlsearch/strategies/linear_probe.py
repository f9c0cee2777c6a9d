"""Linear probe: the pretrained backbone frozen (eval mode, no gradients); only the new head trains.
The whole backbone is the frozen prefix: its output can be cached (feature boundary HEAD)."""

from __future__ import annotations

from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import HEAD
from tlsearch.space.trial_config import TrialConfig
from tlsearch.strategies.base import STRATEGIES, Prepared, freeze_except, layerwise_groups


@STRATEGIES.register("linear_probe")
def linear_probe(loaded: LoadedModel, config: TrialConfig) -> Prepared:
    model, layers = loaded.model, loaded.layers
    frozen = freeze_except(model, set(layers.head_params))
    groups = layerwise_groups(
        model.named_parameters(),
        layers,
        head_lr=config.head_lr,
        backbone_lr=0.0,
        decay=1.0,
        weight_decay=config.weight_decay,
    )
    return Prepared(model, groups, [model.get_submodule(n) for n in frozen], feature_boundary=HEAD)
