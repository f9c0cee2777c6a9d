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
teaches nothing. Where the space has few discrete configurations (choices and integer ranges: the
space lists them) and TPE has its model (after the seed configs and start-up trials), the next
trial is the untried configuration TPE's acquisition ranks highest (tpe_acquisition: TPE's own
criterion over every untried configuration rather than over 24 draws from its model). Otherwise
the sampler draws, and a repeated draw is recorded in the study as FAIL with the user attribute
`duplicate_of` (the earlier trial's number; the samplers ignore FAIL, and the earlier trial already
informs them); in a listed space an untried configuration picked at random runs instead, elsewhere
the searcher draws again at random (TPE would draw the same point again: its choice is the best
candidate under a model that the skipped draw does not change), up to MAX_REDRAWS times. When no
draw finds an untried one, repeats run from then on (said once) rather than each suggestion spending
draws.

When a listed space has no untried configuration left, ASHA's promotion takes over
(`search.scheduler.promote`, on by default): Ray's ASHA stops a trial for good when it falls below
the bar of a rung, judged against what has reached that rung *so far*, and with the promising
configurations tried first that bar is high early on. Once every configuration has run, a
configuration ASHA stopped that its rungs would keep now (ASHA's promotion rule: within the top
1/reduction_factor of every rung it reached) runs again, the highest rung and best value first,
each (configuration, rung) once. The new trial continues the stopped one: its config carries
`Continuation` (the stopped trial and the epoch it was stopped at); the trial starts from that
trial's last checkpoint and first reports that epoch's metrics again, so ASHA judges it at the rung
it was stopped at with the value it had there, and keeps it (trained from its start where the
checkpoint is gone). The searcher mirrors ASHA's rungs (`AshaRungs`) from the results Tune passes
it. When none can be promoted, the search starts no more trials (it is complete before
`num_samples`).
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlsearch.space import Continuation, SearchSpace

MAX_REDRAWS = 32


class StudySearch(OptunaSearch):
    """OptunaSearch that records trials the scheduler stopped as PRUNED, and epochs as the steps of
    intermediate values (module level: it is pickled with Tune's experiment state and must import
    again on `Tuner.restore`).

    After a restore the persisted study can be ahead of this searcher's pickled state: a trial the
    killed driver had already told may run again from its last checkpoint. The study keeps its
    first, terminal record of such a trial.
    """

    def __init__(
        self,
        *args: Any,
        max_epochs: int,
        skip_duplicates: bool = True,
        rungs: AshaRungs | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._skip_duplicates = skip_duplicates
        self._rungs = rungs  # ASHA's rungs, mirrored for promotion; None: no promotion
        # (configuration, rung) pairs promoted: each is promoted once.
        self._promoted: set[tuple[tuple[tuple[str, Any], ...], float]] = set()
        self.duplicates_skipped = 0

    @property
    def promotions(self) -> int:
        """Configurations run again by ASHA's promotion so far."""
        return len(getattr(self, "_promoted", ()))

    def suggest(self, trial_id: str) -> dict | str | None:
        listed = getattr(self, "_skip_duplicates", False) and getattr(self, "_ot_study", None) is not None
        if listed and not self._queued():
            untried = self._untried()
            if untried == []:  # a listed space tried in full: promote, or the search is complete
                return self._promote(trial_id)
            # A listed space: TPE's choice is the untried configuration its model ranks highest.
            if untried and (scores := tpe_acquisition(self._ot_study, self._ot_study.sampler, untried)):
                self._ot_study.enqueue_trial(self._pick(untried, scores))
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
                self._ot_study.enqueue_trial(self._pick(untried))
                return super().suggest(trial_id)
            return self._promote(trial_id)  # a trial ran the space's last configuration meanwhile
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

    def _promote(self, trial_id: str) -> dict | str | None:
        """Every configuration has been tried (or runs): run again the best one ASHA stopped and would
        keep now; else wait for the running trials (they may make one promotable), else finish."""
        promotion = self._promotion()
        if promotion is None:
            if getattr(self, "_rungs", None) is not None and self._live():
                return None  # Tune asks again later
            print(
                f"[tlsearch] all {len(self._all_points)} configurations of the search space have been "
                f"tried ({self.promotions} promoted): no more trials start",
                flush=True,
            )
            return Searcher.FINISHED
        origin, milestone = promotion
        params = self._ot_trials[origin].params
        self._promoted.add((_key(params), milestone))
        number = self._ot_trials[origin].number
        self._ot_study.enqueue_trial(params, user_attrs={"promoted_from": number, "promoted_at": milestone})
        epoch = self._last_epoch(number)
        then = f"continues from its epoch {epoch}" if epoch else "runs again"
        print(
            f"[tlsearch] every configuration has been tried: trial {number}, stopped at "
            f"{self._rungs.time_attr} {milestone:g}, is within its rungs' top 1/"
            f"{self._rungs.reduction_factor:g} now and {then} (ASHA's promotion)",
            flush=True,
        )
        config = super().suggest(trial_id)
        if epoch and isinstance(config, dict):
            return Continuation(origin, epoch).into(config)
        return config

    def _promotion(self) -> tuple[str, float] | None:
        """ASHA's promotion rule over the trials it stopped: the trial (and the rung it was stopped
        at) whose configuration is in the top 1/reduction_factor of every rung it reached, not yet
        promoted at that rung and with no trial of it running or complete; the highest rung first,
        then the best value there."""
        rungs = getattr(self, "_rungs", None)
        if rungs is None:
            return None
        states = (TrialState.RUNNING, TrialState.COMPLETE)
        busy = {_key(t.params) for t in self._ot_study.get_trials(deepcopy=False, states=states)}
        candidates = []
        for trial_id, milestone in rungs.stopped.items():
            key = _key(self._ot_trials[trial_id].params)
            if key in busy or (key, milestone) in self._promoted or not rungs.would_keep(trial_id):
                continue
            candidates.append((milestone, rungs.recorded[milestone][trial_id], trial_id))
        if not candidates:
            return None
        milestone, _, trial_id = max(candidates, key=lambda c: (c[0], c[1]))
        return trial_id, milestone

    def _last_epoch(self, number: int) -> int | None:
        """The last epoch a trial reported: the step of its last intermediate value in the study
        (a trial ASHA stopped has the value it was stopped on there, at that epoch)."""
        trial = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number)
        return max(trial.intermediate_values, default=None)

    def _live(self) -> bool:
        """Whether a trial this searcher suggested has not ended yet."""
        return any(t not in self._completed_trials for t in self._ot_trials)

    def _pick(self, untried: list[dict[str, Any]], scores: list[float] | None = None) -> dict[str, Any]:
        """The highest-scoring untried configuration, or any without scores; ties at random, seeded
        from the study's size so that the same history picks the same one."""
        rng = random.Random(len(self._ot_study.trials))
        if scores is None:
            return rng.choice(untried)
        top = max(scores)
        return rng.choice([p for p, score in zip(untried, scores, strict=True) if score >= top - 1e-9])

    def _queued(self) -> bool:
        """Whether the study holds configurations waiting to run (the seed configs, first)."""
        return bool(self._ot_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

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
        if (rungs := getattr(self, "_rungs", None)) is not None:
            rungs.record(trial_id, result)
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
        if (rungs := getattr(self, "_rungs", None)) is not None and result is not None and not error:
            # Tune passes the result ASHA stopped a trial on here only.
            milestone = rungs.record(trial_id, result)
            if stopped_early and milestone is not None and trial_id in self._ot_trials:
                rungs.stopped[trial_id] = milestone
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


@dataclass
class AshaRungs:
    """The rungs of Ray's ASHA (AsyncHyperBandScheduler with one bracket and stop_last_trials=False,
    as `search_algorithms` builds it), mirrored from the results Tune passes the searcher: at each
    milestone, the value of every trial that reached it, signed so that larger is better. ASHA keeps
    a trial at a milestone when its value is at least the (1 - 1/reduction_factor) percentile of
    the values recorded there (`cutoff`)."""

    time_attr: str
    metric: str
    mode: str
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
        time, value = result.get(self.time_attr), result.get(self.metric)
        if time is None or value is None:
            return None
        for milestone in self.milestones:
            recorded = self.recorded.setdefault(milestone, {})
            if time >= milestone and trial_id in recorded:
                return milestone  # judged here already: ASHA records nothing further
            if time >= milestone:
                recorded[trial_id] = float(value) if self.mode == "max" else -float(value)
                return milestone
        return None

    def cutoff(self, milestone: float) -> float | None:
        values = list(self.recorded.get(milestone, {}).values())
        return float(np.nanpercentile(values, (1 - 1 / self.reduction_factor) * 100)) if values else None

    def would_keep(self, trial_id: str) -> bool:
        """Whether ASHA would keep this trial's values at every milestone it reached, with what the
        rungs hold now (a rerun of a deterministic trial reports the same values)."""
        reached = [m for m, recorded in self.recorded.items() if trial_id in recorded]
        return bool(reached) and all(self.recorded[m][trial_id] >= self.cutoff(m) for m in reached)


def tpe_acquisition(
    study: optuna.Study, sampler: optuna.samplers.BaseSampler, points: list[dict[str, Any]]
) -> list[float] | None:
    """TPE's acquisition, log l(x) - log g(x), of each point (flat parameters, as `trial.params`),
    from the study's trials as TPESampler splits them; None if the sampler is not TPE or is still in
    its start-up trials.

    TPE draws 24 candidates from l(x), the density of the best trials, and runs the one with the
    largest l(x)/g(x). Once it has converged those candidates are configurations already run, which
    a searcher that never trains a configuration twice must replace; in a listed space the searcher
    scores every untried configuration by the same l(x)/g(x) and runs the best (on the recorded
    learning-curve tables, benchmarks/search_efficiency.py: 0.72x the device-seconds to target on
    the 61-configuration one, against TPE's draw with repeats replaced at random). With `group` each
    independent subspace (a strategy's knobs) has its own l and g, and a point's score is the sum
    over the subspaces it has parameters in; independent TPE scores every parameter alone. Optuna
    has no public API for the densities: this uses TPESampler's internals as of Optuna 5, and
    returns None (the sampler draws as usual) if they change.
    """
    if not isinstance(sampler, optuna.samplers.TPESampler) or not points:
        return None
    try:
        return _tpe_acquisition(study, sampler, points)
    except (AttributeError, ImportError, TypeError, KeyError, ValueError) as err:
        global _warned_tpe_internals
        if not _warned_tpe_internals:
            _warned_tpe_internals = True
            warnings.warn(
                f"[tlsearch] cannot rank untried configurations with this Optuna's TPE ({err!r}); "
                "repeated draws are replaced by an untried configuration at random",
                stacklevel=2,
            )
        return None


_warned_tpe_internals = False


def _tpe_acquisition(
    study: optuna.Study, sampler: optuna.samplers.TPESampler, points: list[dict[str, Any]]
) -> list[float] | None:
    from optuna.samplers._tpe.sampler import _split_trials, default_gamma

    # As TPESampler._sample: with the constant liar, running trials count among the worse ones.
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    if sampler._constant_liar:
        states += (TrialState.RUNNING,)
    trials = study.get_trials(deepcopy=False, states=states)
    finished = sum(t.state != TrialState.RUNNING for t in trials)
    if finished < sampler._n_startup_trials:
        return None
    below, above = _split_trials(study, trials, (sampler._gamma or default_gamma)(finished))
    if sampler._group:
        subspaces = sampler._group_decomposed_search_space.calculate(study).search_spaces
    elif sampler._multivariate:
        subspaces = [sampler._search_space.calculate(study)]
    else:  # independent TPE: one parameter at a time
        distributions = {name: dist for t in trials for name, dist in t.distributions.items()}
        subspaces = [{name: dist} for name, dist in distributions.items()]
    scores = [0.0] * len(points)
    for subspace in subspaces:
        space = {name: dist for name, dist in sorted(subspace.items()) if not dist.single()}
        inside = [i for i, point in enumerate(points) if space and space.keys() <= point.keys()]
        if not inside:
            continue
        l_below = sampler._build_parzen_estimator(study, space, below, handle_below=True)
        g_above = sampler._build_parzen_estimator(study, space, above, handle_below=False)
        samples = {
            name: np.asarray([dist.to_internal_repr(points[i][name]) for i in inside])
            for name, dist in space.items()
        }
        values = sampler._compute_acquisition_func(samples, l_below, g_above)
        for i, value in zip(inside, values, strict=True):
            scores[i] += float(value)
    return scores


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
