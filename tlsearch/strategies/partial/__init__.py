"""Partial fine-tuning: the top `unfreeze_depth` blocks, the final norm and the head train, at the
layer-wise rates `full` uses; the rest is frozen and kept in eval mode."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, LAYER_DECAY, Knob, Knobs, Strategy, backbone_lr


class PartialKnobs(Knobs):
    """`partial`: the top blocks train, the rest is frozen."""

    head_lr: Annotated[float, HEAD_LR]
    backbone_lr: Annotated[float, backbone_lr(Param.range(1e-5, 1e-3, log=True))]
    layer_decay: Annotated[float, LAYER_DECAY]
    unfreeze_depth: Annotated[
        int,
        Knob(
            Param(low=1, high=4),
            2,
            "Number of top blocks that train; the default range is clipped to the model's block count.",
            ge=1,
            at_most_blocks=True,
        ),
    ]


STRATEGY = Strategy(
    "partial",
    PartialKnobs,
    "tlsearch.strategies.partial.apply",
    summary="the top `unfreeze_depth` blocks, the final norm, the head",
    feature_cache=True,
    default=True,
)
