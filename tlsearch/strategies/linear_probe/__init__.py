"""Linear probe: the pretrained backbone frozen (eval mode, no gradients); only a new head trains."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from tlsearch.spec.strategy import HEAD_LR, Knobs, Strategy


class LinearProbeKnobs(Knobs):
    """`linear_probe`: a new head on the frozen backbone."""

    # A linear head alone wants a larger step than a head trained with its backbone.
    head_lr: Annotated[float, replace(HEAD_LR, preferred=1e-2)]


STRATEGY = Strategy(
    "linear_probe",
    LinearProbeKnobs,
    "tlsearch.strategies.linear_probe.apply",
    summary="a new head; the backbone is frozen and in eval mode",
    feature_cache=True,
    default=True,
)
