"""No batch-norm conversion here (unlike the frozen strategies): a block that joins later must train
its norms, so a frozen block is only kept in eval mode (its statistics do not move)."""

from __future__ import annotations

from tlsearch.models.sources import LoadedModel
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, layerwise_groups
from tlsearch.strategies.gradual import GradualKnobs, unfrozen_blocks


def apply(loaded: LoadedModel, knobs: GradualKnobs, common: CommonKnobs) -> Prepared:
    model, layers = loaded.model, loaded.layers
    for param in model.parameters():  # every parameter that will train has its group from the start
        param.requires_grad_(True)
    groups = layerwise_groups(
        model.named_parameters(),
        layers,
        head_lr=knobs.head_lr,
        backbone_lr=knobs.backbone_lr,
        decay=knobs.layer_decay,
        weight_decay=common.weight_decay,
    )

    def trainable_at(epoch: int) -> set[str]:
        depth = unfrozen_blocks(epoch, knobs.probe_epochs, knobs.unfreeze_every, layers.num_blocks)
        return set(layers.head_params) | layers.top_blocks(depth)

    prepared = Prepared(model, groups, [], trainable_at=trainable_at)
    prepared.enter_epoch(0)
    return prepared
