"""LP-FT (Kumar et al., ICLR 2022): the new head is first trained alone on the frozen backbone's
features for `probe_epochs` (on the feature cache, where the model allows: a fraction of a second
an epoch), before the trial's first epoch; then everything trains with layer-wise rates, as in
`full`. A fitted head distorts the pretrained features less than a random one while fine-tuning.
ASHA compares the fine-tuning epochs with the other strategies' epochs; the probe's time is in the
trial's wall and device seconds."""

from __future__ import annotations

from typing import Annotated

from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, LAYER_DECAY, Knob, Knobs, Strategy, backbone_lr


class LpFtKnobs(Knobs):
    """`lp_ft`: a linear probe first, then everything, with layer-wise learning rates."""

    head_lr: Annotated[float, HEAD_LR]
    backbone_lr: Annotated[float, backbone_lr(Param.range(5e-6, 5e-4, log=True))]
    layer_decay: Annotated[float, LAYER_DECAY]
    probe_epochs: Annotated[
        int,
        Knob(
            Param.of(20),
            20,
            "Epochs of the head alone on frozen features (at `head_lr`, cosine to 0) before fine-tuning.",
            ge=1,
            le=10000,
        ),
    ]


STRATEGY = Strategy(
    "lp_ft",
    LpFtKnobs,
    "tlsearch.strategies.lp_ft.apply",
    summary="a linear probe on frozen features first, then everything, with layer-wise learning rates",
    feature_cache=True,  # for its head probe
    not_streamed_because="its head probe runs many epochs over rows held in memory or cached features",
)
