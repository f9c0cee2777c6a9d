"""What a search optimises, named in one place.

A search has a tuple of objectives (`SearchSpec.objectives`, one today: `search.metric` and
`search.mode`). The searcher, ASHA, checkpoint scoring and the best trial all take their metric and
mode from it, so a second objective is a change of data; where one order of trials is needed (ASHA's
rungs, checkpoint scores, the best trial) the first objective, `primary`, gives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """A metric the training loop reports, and whether smaller or larger is better."""

    metric: str
    mode: str  # "min" or "max"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"an objective's mode is 'min' or 'max', but got {self.mode!r} for {self.metric}"
            )

    def signed(self, value: float) -> float:
        """`value` with larger always better: trials compare by one rule, whichever the mode."""
        return float(value) if self.mode == "max" else -float(value)


def primary(objectives: Sequence[Objective]) -> Objective:
    """The objective that orders trials where a single order is needed: the first."""
    if not objectives:
        raise ValueError("a search needs at least one objective")
    return objectives[0]
