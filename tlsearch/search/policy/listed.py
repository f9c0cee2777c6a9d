"""Acquisition over the untried configurations of a listed space.

Where the space has few discrete configurations (choices and integer ranges: the space lists them)
and TPE has its model (after the seed configs and start-up trials), the next trial is the untried
configuration TPE's acquisition ranks highest: TPE's own criterion, l(x)/g(x), over every untried
configuration rather than over its 24 draws from l(x), which once it has converged are
configurations already run. On the recorded learning-curve tables (benchmarks/search_efficiency.py)
that takes 0.72x the device-seconds to target on the 61-configuration one, against TPE's draw with
repeats replaced at random. A repeated draw is replaced by an untried configuration at random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import optuna

from tlsearch.search.policy.optuna_adapter import tpe_acquisition
from tlsearch.search.policy.trials import config_key, taken
from tlsearch.space import SearchSpace


@dataclass
class ListedSpace:
    """The configurations of the search space, where it has few and discrete ones."""

    space: object  # what the searcher searches: a SearchSpace lists its configurations

    @cached_property
    def points(self) -> list[dict[str, Any]] | None:
        """Every configuration, as flat parameters (`trial.params`); None where the space has too
        many or continuous ones."""
        return self.space.enumerate() if isinstance(self.space, SearchSpace) else None

    def untried(self, study: optuna.Study) -> list[dict[str, Any]] | None:
        """The configurations no trial has taken, where the space lists them; else None."""
        if self.points is None:
            return None
        tried = taken(study)
        return [p for p in self.points if config_key(p) not in tried]

    def best(self, study: optuna.Study, untried: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The untried configuration TPE's acquisition ranks highest; None without a TPE model."""
        scores = tpe_acquisition(study, study.sampler, untried)
        return _pick(study, untried, scores) if scores else None

    def at_random(self, study: optuna.Study, untried: list[dict[str, Any]]) -> dict[str, Any]:
        """An untried configuration at random."""
        return _pick(study, untried)


def _pick(
    study: optuna.Study, untried: list[dict[str, Any]], scores: list[float] | None = None
) -> dict[str, Any]:
    """The highest-scoring untried configuration, or any without scores; ties at random, seeded
    from the study's size so that the same history picks the same one."""
    rng = random.Random(len(study.trials))
    if scores is None:
        return rng.choice(untried)
    top = max(scores)
    return rng.choice([p for p, score in zip(untried, scores, strict=True) if score >= top - 1e-9])
