"""The Optuna study behind a search: persisted (journal file in the run directory, or an RDB URL),
and told how ASHA ended each trial.

Trials stopped early by the scheduler are recorded as PRUNED at the epoch they were stopped, with
every epoch's value as an intermediate value. Ray's OptunaSearch would record them COMPLETE with
their last value, as if a network trained for one epoch had been trained to the end. PRUNED is what
ASHA decided: Optuna's TPE ranks every completed trial above every pruned one, and among pruned
trials the ones that got further above the ones stopped earlier.

A configuration is never trained twice (`search.skip_duplicates`, on by default): in a space of
choices and integers the sampler draws configurations it has already run (TPE ever more often as it
converges), and a trial's training is deterministic, so a repeat costs a trial's device time and
teaches nothing. The repeated draw is recorded in the study as FAIL with the user attribute
`duplicate_of` (the earlier trial's number; the samplers ignore FAIL, and the earlier trial already
informs them) and the searcher draws again at random (TPE would draw the same point again: its
choice is the best candidate under a model that the skipped draw does not change), up to
MAX_REDRAWS times; past that the space looks exhausted: the repeat runs, and so do later ones (the
search says so once) rather than each suggestion spending MAX_REDRAWS draws.
"""

from __future__ import annotations

import contextlib
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

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

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if not getattr(self, "_skip_duplicates", False) or not isinstance(config, dict):
            return config
        sampler = self._ot_study.sampler
        try:
            for redraw in range(MAX_REDRAWS):
                ot_trial = self._ot_trials[trial_id]
                earlier = self._same_params(ot_trial)
                if earlier is None:
                    return config
                ot_trial.set_user_attr("duplicate_of", earlier)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
                del self._ot_trials[trial_id]
                self.duplicates_skipped += 1
                # Seeded from the study's size: a search with a sampler seed stays reproducible.
                self._ot_study.sampler = optuna.samplers.RandomSampler(
                    seed=len(self._ot_study.trials) + redraw
                )
                config = super().suggest(trial_id)
        finally:
            self._ot_study.sampler = sampler
        self._skip_duplicates = False
        print(
            f"[tlsearch] no untried configuration in {MAX_REDRAWS} draws: the search space looks "
            f"exhausted after {len(self._ot_trials)} trials; configurations may repeat from now on",
            flush=True,
        )
        return config

    def _same_params(self, ot_trial: optuna.Trial) -> int | None:
        """The number of an earlier trial (running, completed or pruned) with the same parameters."""
        params = ot_trial.params
        for other in self._ot_study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        ):
            if other.number != ot_trial.number and other.params == params:
                return other.number
        return None

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
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def close_orphans(study_name: str, storage: optuna.storages.BaseStorage) -> int:
    """Fail the trials a killed driver left RUNNING, so every trial of the study ends terminal.
    Call only when the search has ended (no trial of this search is running any more)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in orphans:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)
