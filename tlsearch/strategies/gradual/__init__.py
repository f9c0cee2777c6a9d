"""Gradual unfreezing (Howard & Ruder, 2018): the new head trains alone for `probe_epochs`, then one
more block joins from the top every `unfreeze_every` epochs (the final norm / pooler with the top
block, the stem / embeddings last), until everything trains. A block trains at its layer-wise rate
(as in `full`) from the epoch it joins; until then it is frozen and in eval mode."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, LAYER_DECAY, Knob, Knobs, Strategy, backbone_lr


class GradualKnobs(Knobs):
    """`gradual`: the head first, then one more block from the top every `unfreeze_every` epochs."""

    head_lr: Annotated[float, HEAD_LR]
    backbone_lr: Annotated[float, backbone_lr(Param.range(5e-6, 5e-4, log=True))]
    layer_decay: Annotated[float, LAYER_DECAY]
    probe_epochs: Annotated[
        int, Knob(Param.of(1), 1, "Epochs the head trains alone before the first block joins.", ge=0, le=1000)
    ]
    unfreeze_every: Annotated[
        int, Knob(Param.of(1), 1, "Epochs between one block joining and the next.", ge=1, le=1000)
    ]


def unfrozen_blocks(epoch: int, probe_epochs: int, unfreeze_every: int, num_blocks: int) -> int:
    """How many of the top blocks train in `epoch` (0-based); num_blocks + 1: the stem too."""
    if epoch < probe_epochs:
        return 0
    return min(1 + (epoch - probe_epochs) // unfreeze_every, num_blocks + 1)


STRATEGY = Strategy(
    "gradual",
    GradualKnobs,
    "tlsearch.strategies.gradual.apply",
    summary="the head, then one more block from the top every `unfreeze_every` epochs",
    # FSDP2 builds a block's gathered parameters once, with the trainability they had when it was
    # sharded: a block that joins later would get no gradients.
    not_sharded_because="it unfreezes blocks mid-trial, and FSDP2 fixes what trains when it shards",
)
