"""The study's trials as the policies see them: a configuration is its parameters."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

Key = tuple[tuple[str, Any], ...]
# Trials whose configuration counts as tried: it has run, or runs now.
TAKEN = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def config_key(params: dict[str, Any]) -> Key:
    return tuple(sorted(params.items()))


def taken(study: optuna.Study, but: int | None = None) -> dict[Key, int]:
    """Parameters of every trial running, completed or pruned (not trial number `but`) -> its number."""
    return {
        config_key(t.params): t.number
        for t in study.get_trials(deepcopy=False, states=TAKEN)
        if t.number != but
    }


def waiting(study: optuna.Study) -> bool:
    """Whether the study holds configurations waiting to run (the seed configs, first)."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
