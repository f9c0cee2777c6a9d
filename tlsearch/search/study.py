"""The Optuna study behind a search: persisted (journal file in the run directory, or an RDB URL),
and told how ASHA ended each trial.

Trials stopped early by the scheduler are recorded as PRUNED at the epoch they were stopped, with
every epoch's value as an intermediate value, the epoch the scheduler stopped them at included
(Tune passes that result to the scheduler, not to `on_trial_result`). Ray's OptunaSearch would
record them COMPLETE with their last value, as if a network trained for one epoch had been trained
to the end. PRUNED is what ASHA decided: Optuna's TPE ranks every completed trial above every
pruned one, and among pruned trials the ones that got further above the ones stopped earlier.

What runs next is the search policy's (tlsearch/search/policy/): no configuration trained twice
(duplicates), in a listed space the untried configuration TPE ranks highest (listed), and once
such a space has been tried in full ASHA's promotion (promotion); when none can be promoted, the
search starts no more trials (it is complete before `num_samples`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tlsearch.search.policy.duplicates import MAX_REDRAWS, Duplicates, random_redraws
from tlsearch.search.policy.listed import ListedSpace
from tlsearch.search.policy.optuna_adapter import OptunaSearchAdapter
from tlsearch.search.policy.promotion import AshaRungs, Promotion
from tlsearch.search.policy.trials import waiting
from tlsearch.space import Continuation, SearchSpace
from tlsearch.spec.objective import Objective, primary


class StudySearch(OptunaSearchAdapter):
    """OptunaSearch that records trials the scheduler stopped as PRUNED, and epochs as the steps of
    intermediate values, and suggests by the search policy (module level: it is pickled with Tune's
    experiment state and must import again on `Tuner.restore`).

    After a restore the persisted study can be ahead of this searcher's pickled state: a trial the
    killed driver had already told may run again from its last checkpoint. The study keeps its
    first, terminal record of such a trial.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        objectives: Sequence[Objective],
        max_epochs: int,
        skip_duplicates: bool = True,
        rungs: AshaRungs | None = None,
        **kwargs: Any,
    ):
        if len(objectives) != 1:
            # Each epoch's value is a trial's intermediate value, and Optuna has those (and PRUNED
            # trials) for single-objective studies only.
            raise NotImplementedError(f"a search has one objective for now, but got {len(objectives)}")
        super().__init__(space, objectives=objectives, **kwargs)
        self._objective = primary(objectives)
        self._max_epochs = max_epochs
        self._duplicates = Duplicates(enabled=skip_duplicates)
        self._listed = ListedSpace(space)
        self._promotion = Promotion(rungs) if rungs is not None else None  # None: no promotion

    @property
    def duplicates_skipped(self) -> int:
        """Repeated draws skipped so far."""
        return self._duplicates.skipped

    @property
    def promotions(self) -> int:
        """Configurations run again by ASHA's promotion so far."""
        return len(self._promotion.promoted) if self._promotion is not None else 0

    # Searcher.FINISHED is a str, which Ray's annotation of `suggest` leaves out.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        study = self.study
        if self._duplicates.enabled and not waiting(study):
            untried = self._listed.untried(study)
            if untried == []:  # a listed space tried in full: promote, or the search is complete
                return self._promote(trial_id)
            # A listed space: TPE's choice is the untried configuration its model ranks highest.
            if untried and (best := self._listed.best(study, untried)) is not None:
                study.enqueue_trial(best)
        config = super().suggest(trial_id)
        if not self._duplicates.enabled or not isinstance(config, dict):
            return config
        return self._unless_repeated(trial_id, config)

    def _unless_repeated(self, trial_id: str, config: dict) -> dict | str | None:
        """`config`, or in place of a repeat an untried configuration (listed spaces) or a random
        redraw (others)."""
        study = self.study
        earlier = self._duplicates.earlier(study, self.asked[trial_id])
        if earlier is None:
            return config
        self._duplicates.skip(study, self.forget(trial_id), earlier)
        untried = self._listed.untried(study)
        if untried is not None:  # a space of few discrete configurations: pick an untried one
            if untried:
                study.enqueue_trial(self._listed.at_random(study, untried))
                return super().suggest(trial_id)
            return self._promote(trial_id)  # a trial ran the space's last configuration meanwhile
        with random_redraws(study) as redraws:
            for _ in redraws:
                redrawn = super().suggest(trial_id)
                earlier = self._duplicates.earlier(study, self.asked[trial_id])
                if earlier is None:
                    return redrawn
                self._duplicates.skip(study, self.forget(trial_id), earlier)
        self._duplicates.give_up(f"no untried configuration in {MAX_REDRAWS} random draws", len(self.asked))
        return super().suggest(trial_id)

    def _promote(self, trial_id: str) -> dict | str | None:
        """Every configuration has been tried (or runs): run again the best one ASHA stopped and would
        keep now; else wait for the running trials (they may make one promotable), else finish."""
        study = self.study
        promotion = self._promotion
        candidate = promotion.candidate(study, self.asked) if promotion is not None else None
        if candidate is None:
            if promotion is not None and self.unfinished():
                return None  # Tune asks again later
            print(
                f"[tlsearch] all {len(self._listed.points or ())} configurations of the search space have "
                f"been tried ({self.promotions} promoted): no more trials start",
                flush=True,
            )
            return Searcher.FINISHED
        origin, milestone = candidate
        assert promotion is not None  # it found the candidate
        epoch = promotion.take(study, self.asked[origin], milestone)
        config = super().suggest(trial_id)
        if epoch and isinstance(config, dict):
            return Continuation(origin, epoch).into(config)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._promotion is not None:
            self._promotion.record(trial_id, result)
        metric = self._objective.metric
        if self.is_told(trial_id) or trial_id not in self.asked or metric not in result:
            return
        try:
            # The epoch, not Tune's training_iteration: the same step after a retry or a resume.
            self.asked[trial_id].report(result[metric], int(result.get("epoch", 0)))
        except optuna.exceptions.UpdateFinishedTrialError:
            self.mark_told(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        epoch = (result or {}).get("epoch", self._max_epochs)
        stopped_early = not error and result is not None and epoch < self._max_epochs
        if self._promotion is not None and result is not None and not error:
            # Tune passes the result ASHA stopped a trial on here only.
            self._promotion.record(trial_id, result, stopped=stopped_early and trial_id in self.asked)
        if not stopped_early or trial_id not in self.asked or self.is_told(trial_id):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self.asked[trial_id]
        metric = self._objective.metric
        assert result is not None  # stopped early
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if metric in result:
                # Tune does not pass the result the scheduler stopped a trial on to
                # on_trial_result: the value ASHA judged, at the epoch it judged it, is recorded here.
                with warnings.catch_warnings():  # a retried trial may report its epoch again
                    warnings.simplefilter("ignore")
                    ot_trial.report(result[metric], int(epoch))
            self.study.tell(ot_trial, state=TrialState.PRUNED)
        self.mark_told(trial_id)


def close_orphans(
    study_name: str, storage: optuna.storages.BaseStorage, *, pruned_when_reported: bool = False
) -> int:
    """Fail the trials a killed driver left RUNNING, so every trial of the study ends terminal.
    Call only when the search has ended (no trial of this search is running any more).

    `pruned_when_reported`: the search's time budget stopped them. One that reported an epoch is
    PRUNED at it, as a trial ASHA stopped; one that never did (or never started) fails."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in orphans:
        reported = pruned_when_reported and bool(trial.intermediate_values)
        study.tell(trial.number, state=TrialState.PRUNED if reported else TrialState.FAIL)
    return len(orphans)
