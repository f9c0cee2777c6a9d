"""Partial and full fine-tuning with layer-wise learning rates.

`full`: everything trains. The head gets `head_lr`; the top block and what sits above it (final
norm, pooler) get `backbone_lr`; each block further down is multiplied by `layer_decay` once more;
the stem / embeddings get `backbone_lr * layer_decay ** L` for L blocks.
`partial`: the top `unfreeze_depth` blocks, the final norm and the head train by the same rule;
the rest is frozen and kept in eval mode.
"""

from __future__ import annotations

from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import block_boundary
from tlsearch.space.trial_config import TrialConfig
from tlsearch.strategies.base import STRATEGIES, Prepared, freeze_except, layerwise_groups


def _prepare(
    loaded: LoadedModel, config: TrialConfig, trainable: set[str], feature_boundary: str | None = None
) -> Prepared:
    model, layers = loaded.model, loaded.layers
    frozen = freeze_except(model, trainable)
    assert config.backbone_lr is not None and config.layer_decay is not None
    groups = layerwise_groups(
        model.named_parameters(),
        layers,
        head_lr=config.head_lr,
        backbone_lr=config.backbone_lr,
        decay=config.layer_decay,
        weight_decay=config.weight_decay,
    )
    return Prepared(model, groups, [model.get_submodule(n) for n in frozen], feature_boundary)


@STRATEGIES.register("partial")
def partial(loaded: LoadedModel, config: TrialConfig) -> Prepared:
    assert config.unfreeze_depth is not None
    if config.unfreeze_depth > loaded.layers.num_blocks:
        raise ValueError(
            f"unfreeze_depth must be ≤ the model's {loaded.layers.num_blocks} blocks, "
            f"but got {config.unfreeze_depth}"
        )
    trainable = loaded.layers.top_blocks(config.unfreeze_depth) | loaded.layers.head_params
    # The stem and the blocks below the top `unfreeze_depth` are frozen and in eval mode: their output,
    # the input of the lowest trained block, can be cached.
    boundary = block_boundary(loaded.layers.num_blocks - config.unfreeze_depth)
    return _prepare(loaded, config, trainable, boundary)


@STRATEGIES.register("full")
def full(loaded: LoadedModel, config: TrialConfig) -> Prepared:
    return _prepare(loaded, config, {n for n, _ in loaded.model.named_parameters()})
