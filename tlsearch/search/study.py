"""The Optuna study behind a search: persisted (journal file in the run directory, or an RDB URL),
and told how ASHA ended each trial.

Trials stopped early by the scheduler are recorded as PRUNED at the epoch they were stopped, with
every epoch's value as an intermediate value, the epoch the scheduler stopped them at included
(Tune passes that result to the scheduler, not to `on_trial_result`). Ray's OptunaSearch would
record them COMPLETE with their last value, as if a network trained for one epoch had been trained
to the end. PRUNED is what ASHA decided: Optuna's TPE ranks every completed trial above every
pruned one, and among pruned trials the ones that got further above the ones stopped earlier.

A configuration is never trained twice (`search.skip_duplicates`, on by default): in a space of
choices and integers the sampler draws configurations it has already run (TPE ever more often as it
converges), and a trial's training is deterministic, so a repeat costs a trial's device time and
teaches nothing. The repeated draw is recorded in the study as FAIL with the user attribute
`duplicate_of` (the earlier trial's number; the samplers ignore FAIL, and the earlier trial already
informs them). Where the space has few discrete configurations (choices and integer ranges: the
space lists them), the searcher then runs an untried one picked at random; elsewhere it draws again
at random (TPE would draw the same point again: its choice is the best candidate under a model that
the skipped draw does not change), up to MAX_REDRAWS times. When a listed space has no untried
configuration left, the search starts no more trials (it is complete before `num_samples`); when no
draw finds an untried one, repeats run from then on (said once) rather than each suggestion spending
draws.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlsearch.space import SearchSpace

MAX_REDRAWS = 32


class StudySearch(OptunaSearch):
    """OptunaSearch that records trials the scheduler stopped as PRUNED, and epochs as the steps of
    intermediate values (module level: it is pickled with Tune's experiment state and must import
    again on `Tuner.restore`).

    After a restore the persisted study can be ahead of this searcher's pickled state: a trial the
    killed driver had already told may run again from its last checkpoint. The study keeps its
    first, terminal record of such a trial.
    """

    def __init__(self, *args: Any, max_epochs: int, skip_duplicates: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._skip_duplicates = skip_duplicates
        self.duplicates_skipped = 0

    def suggest(self, trial_id: str) -> dict | str | None:
        config = super().suggest(trial_id)
        if not getattr(self, "_skip_duplicates", False) or not isinstance(config, dict):
            return config
        earlier = self._same_params(self._ot_trials[trial_id])
        if earlier is None:
            return config
        self._skip(trial_id, earlier)
        untried = self._untried()
        if untried is not None:  # a space of few discrete configurations: pick an untried one
            if untried:
                self._ot_study.enqueue_trial(random.Random(len(self._ot_study.trials)).choice(untried))
                return super().suggest(trial_id)
            # Every configuration has been tried (or runs): the search is complete before num_samples.
            print(
                f"[tlsearch] all {len(self._all_points)} configurations of the search space have been "
                "tried: no more trials start",
                flush=True,
            )
            return Searcher.FINISHED
        sampler = self._ot_study.sampler
        try:
            for redraw in range(MAX_REDRAWS):
                # Seeded from the study's size: the same history draws the same configurations.
                self._ot_study.sampler = optuna.samplers.RandomSampler(
                    seed=len(self._ot_study.trials) + redraw
                )
                config = super().suggest(trial_id)
                earlier = self._same_params(self._ot_trials[trial_id])
                if earlier is None:
                    return config
                self._skip(trial_id, earlier)
        finally:
            self._ot_study.sampler = sampler
        return self._exhausted(trial_id, f"no untried configuration in {MAX_REDRAWS} random draws")

    def _skip(self, trial_id: str, earlier: int) -> None:
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr("duplicate_of", earlier)
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        self.duplicates_skipped += 1

    def _exhausted(self, trial_id: str, why: str) -> dict | str | None:
        """Repeats run from now on: better than a search that stalls, or spends draws on every suggestion."""
        self._skip_duplicates = False
        print(
            f"[tlsearch] {why}: the search space looks exhausted after {len(self._ot_trials)} trials; "
            "configurations repeat from now on",
            flush=True,
        )
        return super().suggest(trial_id)

    def _taken(self, but: int | None = None) -> dict[tuple[tuple[str, Any], ...], int]:
        """Parameters of every trial running, completed or pruned (not `but`) -> a trial's number."""
        states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        return {
            _key(t.params): t.number
            for t in self._ot_study.get_trials(deepcopy=False, states=states)
            if t.number != but
        }

    def _untried(self) -> list[dict[str, Any]] | None:
        """The configurations no trial has taken, where the space has few and discrete ones; else None."""
        if not hasattr(self, "_all_points"):
            self._all_points = self._space.enumerate() if isinstance(self._space, SearchSpace) else None
        if self._all_points is None:
            return None
        taken = self._taken()
        return [p for p in self._all_points if _key(p) not in taken]

    def _same_params(self, ot_trial: optuna.Trial) -> int | None:
        """The number of an earlier trial (running, completed or pruned) with the same parameters."""
        return self._taken(but=ot_trial.number).get(_key(ot_trial.params))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or self.metric not in result:
            return
        try:
            # The epoch, not Tune's training_iteration: the same step after a retry or a resume.
            self._ot_trials[trial_id].report(result[self.metric], int(result.get("epoch", 0)))
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        epoch = (result or {}).get("epoch", self._max_epochs)
        stopped_early = not error and result is not None and epoch < self._max_epochs
        if not stopped_early or trial_id not in self._ot_trials or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if self.metric in result:
                # Tune does not pass the result the scheduler stopped a trial on to
                # on_trial_result: the value ASHA judged, at the epoch it judged it, is recorded here.
                with warnings.catch_warnings():  # a retried trial may report its epoch again
                    warnings.simplefilter("ignore")
                    ot_trial.report(result[self.metric], int(epoch))
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def close_orphans(study_name: str, storage: optuna.storages.BaseStorage) -> int:
    """Fail the trials a killed driver left RUNNING, so every trial of the study ends terminal.
    Call only when the search has ended (no trial of this search is running any more)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in orphans:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


def _key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))
