"""LoRA (peft): low-rank adapters on the linear modules of a target preset; the new head trains in
full. Checkpoints hold the adapters and the head only, in peft's own format."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec import vocab
from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, Knob, Knobs, Strategy, learning_rate


class LoraKnobs(Knobs):
    """`lora`: peft LoRA adapters and the new head train; the backbone's own weights stay frozen."""

    head_lr: Annotated[float, HEAD_LR]
    lr: Annotated[
        float, learning_rate(Param.range(1e-4, 5e-3, log=True), 1e-3, "Learning rate of the adapters.")
    ]
    rank: Annotated[int, Knob(Param.of(4, 8, 16), 8, "Rank of each adapter (peft's `r`).", ge=1, le=1024)]
    alpha: Annotated[
        float,
        Knob(Param.of(8.0, 16.0, 32.0), 16.0, "peft's `lora_alpha`: adapters scale by alpha / rank.", gt=0),
    ]
    dropout: Annotated[
        float,
        Knob(
            Param.range(0.0, 0.2), 0.05, "Dropout on the adapters' input (peft's `lora_dropout`).", ge=0, lt=1
        ),
    ]
    targets: Annotated[
        str,
        Knob(
            Param.of("attention", "attention_mlp"),
            "attention",
            "Which linear modules get adapters: `attention` (the blocks' attention projections), "
            "`attention_mlp` (every linear layer in the blocks), `all_linear` (every one outside the head).",
            allowed=vocab.LORA_TARGET_PRESETS,
        ),
    ]
    variant: Annotated[
        str,
        Knob(
            Param.of("lora"),
            "lora",
            "`lora`; `dora` (weight-decomposed LoRA, peft's `use_dora`: a trained magnitude per output, "
            "the adapters set the direction) or `rslora` (adapters scale by alpha / √rank, peft's "
            "`use_rslora`, steadier at high ranks).",
            allowed=vocab.LORA_VARIANTS,
        ),
    ] = "lora"  # a trial config from before the knob existed trained plain LoRA


STRATEGY = Strategy(
    "lora",
    LoraKnobs,
    "tlsearch.strategies.lora.apply",
    summary="peft LoRA adapters on a target preset, and the new head",
    default=True,
)
