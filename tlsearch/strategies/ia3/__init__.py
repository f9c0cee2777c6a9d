"""IA3 (peft; Liu et al., 2022): learned vectors rescale the outputs of the targeted attention
projections and the inputs of the targeted feed-forward layers; the new head trains in full. Far
fewer trained parameters than LoRA (one vector per module). Checkpoints hold the vectors and the head
only, in peft's own format."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec import vocab
from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, Knob, Knobs, Strategy, learning_rate


class Ia3Knobs(Knobs):
    """`ia3`: peft IA3 scaling vectors and the new head train; the backbone's own weights stay frozen."""

    head_lr: Annotated[float, HEAD_LR]
    lr: Annotated[
        float, learning_rate(Param.range(1e-3, 3e-2, log=True), 5e-3, "Learning rate of the IA3 vectors.")
    ]
    targets: Annotated[
        str,
        Knob(
            Param.of("attention_mlp"),
            "attention_mlp",
            "Which linear modules get a vector: `attention` (the blocks' attention projections, "
            "outputs scaled), `attention_mlp` (also the blocks' feed-forward layers, inputs scaled), "
            "`all_linear` (every one outside the head).",
            allowed=vocab.LORA_TARGET_PRESETS,
        ),
    ]


STRATEGY = Strategy(
    "ia3",
    Ia3Knobs,
    "tlsearch.strategies.ia3.apply",
    summary="peft IA3 vectors rescaling a target preset's activations, and the new head",
)
