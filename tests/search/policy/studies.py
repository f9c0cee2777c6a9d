"""Real Optuna studies for the policy parts' tests: a trial with the parameters a test gives it."""

from __future__ import annotations

from typing import Any

import optuna

X = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3, 4])}


def ask(study: optuna.Study, **params: Any) -> optuna.Trial:
    """A running trial with `params` (each of `X`; any not given is drawn by the study's sampler)."""
    if params:
        study.enqueue_trial(params)
    return study.ask(X)
