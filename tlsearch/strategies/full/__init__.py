"""Full fine-tuning: everything trains, with layer-wise learning rates. The head gets `head_lr`; the
top block and what sits above it (final norm, pooler) get `backbone_lr`; each block further down is
multiplied by `layer_decay` once more; the stem / embeddings get `backbone_lr * layer_decay ** L`
for L blocks."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, LAYER_DECAY, Knobs, Strategy, backbone_lr


class FullKnobs(Knobs):
    """`full`: everything trains, with layer-wise learning rates."""

    head_lr: Annotated[float, HEAD_LR]
    backbone_lr: Annotated[float, backbone_lr(Param.range(5e-6, 5e-4, log=True))]
    layer_decay: Annotated[float, LAYER_DECAY]


STRATEGY = Strategy(
    "full",
    FullKnobs,
    "tlsearch.strategies.full.apply",
    summary="everything, with layer-wise learning rates",
    default=True,
)
