"""Prompt tuning (peft; Lester et al., 2021) for Hugging Face text models: `num_virtual_tokens`
trained embeddings are put before every input's tokens, and the new head trains in full; every
weight of the model stays frozen. The virtual tokens start as copies of random vocabulary embeddings
(peft's `SAMPLE_VOCAB`), at the scale the model expects. Checkpoints hold the prompt and the head
only, in peft's format; the final model keeps the base model and the adapter apart (a prompt does not
merge into weights)."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, Knob, Knobs, Strategy, learning_rate


class PromptTuningKnobs(Knobs):
    """`prompt_tuning`: trained virtual tokens before the input, and the new head; the model is frozen."""

    head_lr: Annotated[float, HEAD_LR]
    lr: Annotated[
        float,
        learning_rate(Param.range(1e-3, 1e-1, log=True), 1e-2, "Learning rate of the virtual tokens."),
    ]
    num_virtual_tokens: Annotated[
        int,
        Knob(
            Param.of(8, 20),
            8,
            "Virtual tokens before each input (they count against the model's position limit, with "
            "`model.max_length`).",
            ge=1,
            le=512,
        ),
    ]


STRATEGY = Strategy(
    "prompt_tuning",
    PromptTuningKnobs,
    "tlsearch.strategies.prompt_tuning.apply",
    summary="peft prompt tuning: trained virtual tokens before the input, and the new head (text)",
)
