"""ASHA's promotion, once a listed space has no untried configuration left
(`search.scheduler.promote`, on by default).

Ray's ASHA stops a trial for good when it falls below the bar of a rung, judged against what has
reached that rung *so far*, and with the promising configurations tried first that bar is high
early on. Once every configuration has run, a configuration ASHA stopped that its rungs would keep
now (ASHA's promotion rule: within the top 1/reduction_factor of every rung it reached) runs again,
the highest rung and best value first, each (configuration, rung) once. The new trial continues the
stopped one (`Continuation`: from that trial's last checkpoint, first reporting that epoch's
metrics again, so ASHA judges it at the rung it was stopped at with the value it had there, and
keeps it). The searcher mirrors ASHA's rungs (`AshaRungs`) from the results Tune passes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState

from tlsearch.search.policy.trials import Key, config_key
from tlsearch.spec.objective import Objective


@dataclass
class AshaRungs:
    """The rungs of Ray's ASHA (AsyncHyperBandScheduler with one bracket and stop_last_trials=False,
    as `search_algorithms` builds it), mirrored from the results Tune passes the searcher: at each
    milestone, the value of every trial that reached it, signed so that larger is better. ASHA keeps
    a trial at a milestone when its value is at least the (1 - 1/reduction_factor) percentile of
    the values recorded there (`cutoff`)."""

    time_attr: str
    objective: Objective  # what ASHA ranks trials by
    grace_period: float
    max_t: float
    reduction_factor: float
    recorded: dict[float, dict[str, float]] = field(default_factory=dict)
    stopped: dict[str, float] = field(default_factory=dict)  # trial -> the milestone ASHA stopped it at

    @property
    def milestones(self) -> list[float]:
        """Descending, as _Bracket builds them: grace_period × reduction_factor^k up to max_t."""
        count = int(math.log(self.max_t / self.grace_period) / math.log(self.reduction_factor) + 1)
        return [self.grace_period * self.reduction_factor**k for k in reversed(range(count))]

    def record(self, trial_id: str, result: dict) -> float | None:
        """Record a result as _Bracket.on_result does: at the highest milestone it has reached and
        the trial has no value at yet, unless it has one at a higher milestone. Returns the milestone."""
        time, value = result.get(self.time_attr), result.get(self.objective.metric)
        if time is None or value is None:
            return None
        for milestone in self.milestones:
            recorded = self.recorded.setdefault(milestone, {})
            if time >= milestone and trial_id in recorded:
                return milestone  # judged here already: ASHA records nothing further
            if time >= milestone:
                recorded[trial_id] = self.objective.signed(value)
                return milestone
        return None

    def cutoff(self, milestone: float) -> float | None:
        values = list(self.recorded.get(milestone, {}).values())
        return float(np.nanpercentile(values, (1 - 1 / self.reduction_factor) * 100)) if values else None

    def would_keep(self, trial_id: str) -> bool:
        """Whether ASHA would keep this trial's values at every milestone it reached, with what the
        rungs hold now (a rerun of a deterministic trial reports the same values)."""
        reached = [m for m, recorded in self.recorded.items() if trial_id in recorded]
        return bool(reached) and all(
            self.recorded[m][trial_id] >= (self.cutoff(m) or -math.inf) for m in reached
        )


@dataclass
class Promotion:
    """The mirrored rungs, and the (configuration, rung) pairs promoted: each is promoted once."""

    rungs: AshaRungs
    promoted: set[tuple[Key, float]] = field(default_factory=set)

    def record(self, trial_id: str, result: dict, *, stopped: bool = False) -> None:
        """Mirror a result to the rungs; `stopped`: ASHA stopped the trial on it."""
        milestone = self.rungs.record(trial_id, result)
        if stopped and milestone is not None:
            self.rungs.stopped[trial_id] = milestone

    def candidate(self, study: optuna.Study, trials: Mapping[str, optuna.Trial]) -> tuple[str, float] | None:
        """ASHA's promotion rule over the trials it stopped (`trials`: Tune trial -> Optuna trial):
        the trial (and the rung it was stopped at) whose configuration is in the top
        1/reduction_factor of every rung it reached, not yet promoted at that rung and with no trial
        of it running or complete; the highest rung first, then the best value there."""
        states = (TrialState.RUNNING, TrialState.COMPLETE)
        busy = {config_key(t.params) for t in study.get_trials(deepcopy=False, states=states)}
        candidates = []
        for trial_id, milestone in self.rungs.stopped.items():
            key = config_key(trials[trial_id].params)
            if key in busy or (key, milestone) in self.promoted or not self.rungs.would_keep(trial_id):
                continue
            candidates.append((milestone, self.rungs.recorded[milestone][trial_id], trial_id))
        if not candidates:
            return None
        milestone, _, trial_id = max(candidates, key=lambda c: (c[0], c[1]))
        return trial_id, milestone

    def take(self, study: optuna.Study, trial: optuna.Trial, milestone: float) -> int | None:
        """Promote `trial`'s configuration at `milestone`: queue it in the study, marked with where it
        comes from, and say so. Returns the epoch its new trial continues from (None: from its start)."""
        self.promoted.add((config_key(trial.params), milestone))
        marks = {"promoted_from": trial.number, "promoted_at": milestone}
        study.enqueue_trial(trial.params, user_attrs=marks)
        epoch = last_epoch(study, trial.number)
        then = f"continues from its epoch {epoch}" if epoch else "runs again"
        print(
            f"[tlsearch] every configuration has been tried: trial {trial.number}, stopped at "
            f"{self.rungs.time_attr} {milestone:g}, is within its rungs' top 1/"
            f"{self.rungs.reduction_factor:g} now and {then} (ASHA's promotion)",
            flush=True,
        )
        return epoch


def last_epoch(study: optuna.Study, number: int) -> int | None:
    """The last epoch a trial reported: the step of its last intermediate value in the study (a
    trial ASHA stopped has the value it was stopped on there, at that epoch)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return max(trial.intermediate_values, default=None)
