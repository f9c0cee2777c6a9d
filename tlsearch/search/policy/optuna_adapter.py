"""The one module that touches Ray's OptunaSearch and Optuna's TPESampler internals.

Neither library has a public API for what the search policy needs: which Optuna trial runs a Tune
trial (to skip it as a duplicate, or record it PRUNED), which Tune trials the study has been told
about, and TPE's densities l(x) and g(x) (to rank untried configurations). Every private name used
is declared below with the type or parameters expected; tests/search/policy/test_optuna_adapter.py
checks them against the installed Ray and Optuna, so an upgrade that changes one fails there, by
name, and not in the middle of a search.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import optuna
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tlsearch.spec.objective import Objective

# Set by OptunaSearch.__init__ (given a space): attribute -> the type expected.
RAY_SEARCH_ATTRIBUTES: dict[str, type] = {
    "_ot_study": optuna.Study,
    "_ot_trials": dict,  # Tune trial id -> optuna.Trial; suggest() asks the study for an id not in it
    "_completed_trials": set,  # Tune trial ids whose end the study has been told
}
# Set by TPESampler.__init__: attribute -> the types expected. (Nothing private is imported here:
# a TPE whose internals differ falls back to its own draws, `tpe_acquisition`.)
TPE_ATTRIBUTES: dict[str, tuple[type, ...]] = {
    "_constant_liar": (bool,),
    "_n_startup_trials": (int,),
    "_gamma": (type(None), Callable),  # type: ignore[dict-item]  # the ABC, as isinstance takes it  # None: default_gamma, which TPE sets on its first sample
    "_group": (bool,),
    "_multivariate": (bool, type(None)),
    "_search_space": (IntersectionSearchSpace,),  # calculate(study) -> {name: distribution}
    # With group: calculate(study).search_spaces -> [{name: distribution}, ...]; else None.
    "_group_decomposed_search_space": (object,),
}
# TPESampler's methods, and functions of optuna.samplers._tpe.sampler: name -> their parameters.
TPE_METHODS: dict[str, tuple[str, ...]] = {
    "_build_parzen_estimator": ("study", "search_space", "trials", "handle_below"),
    "_compute_acquisition_func": ("samples", "mpe_below", "mpe_above"),
}
TPE_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "_split_trials": ("study", "trials", "n_below"),
    "default_gamma": ("x",),
}
TPE_MODULE = "optuna.samplers._tpe.sampler"


class OptunaSearchAdapter(OptunaSearch):
    """Ray's OptunaSearch, with the private state the policy reads behind named methods, and the
    search's objectives as Ray takes them (one: a metric and a mode; several: lists of both)."""

    def __init__(self, space: Any, *, objectives: Sequence[Objective], **kwargs: Any):
        metrics, modes = [o.metric for o in objectives], [o.mode for o in objectives]
        metric: str | list[str] = metrics[0] if len(objectives) == 1 else metrics
        mode: str | list[str] = modes[0] if len(objectives) == 1 else modes
        super().__init__(space, metric=metric, mode=mode, **kwargs)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, which Ray creates once it has a search space."""
        if self._ot_study is None:
            raise RuntimeError(f"{type(self).__name__} has no search space, so no Optuna study yet")
        return self._ot_study

    @property
    def asked(self) -> Mapping[str, optuna.Trial]:
        """The Optuna trial of each Tune trial suggested (and not forgotten), read-only."""
        return MappingProxyType(self._ot_trials)

    def forget(self, trial_id: str) -> optuna.Trial:
        """Drop a Tune trial's Optuna trial: the next `suggest(trial_id)` asks the study again."""
        return self._ot_trials.pop(trial_id)

    def is_told(self, trial_id: str) -> bool:
        """Whether the study has been told how this Tune trial ended."""
        return trial_id in self._completed_trials

    def mark_told(self, trial_id: str) -> None:
        self._completed_trials.add(trial_id)

    def unfinished(self) -> bool:
        """Whether a trial this searcher suggested has not ended yet."""
        return any(t not in self._completed_trials for t in self._ot_trials)


def tpe_acquisition(
    study: optuna.Study, sampler: optuna.samplers.BaseSampler, points: list[dict[str, Any]]
) -> list[float] | None:
    """TPE's acquisition, log l(x) - log g(x), of each point (flat parameters, as `trial.params`),
    from the study's trials as TPESampler splits them; None if the sampler is not TPE or is still in
    its start-up trials.

    With `group` each independent subspace (a strategy's knobs) has its own l and g, and a point's
    score is the sum over the subspaces it has parameters in; independent TPE scores every
    parameter alone. Where the internals are not what this expects, it says so once and returns
    None (the searcher then lets the sampler draw as usual).
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
    states: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
    if sampler._constant_liar:
        states += (TrialState.RUNNING,)
    trials = study.get_trials(deepcopy=False, states=states)
    finished = sum(t.state != TrialState.RUNNING for t in trials)
    if finished < sampler._n_startup_trials:
        return None
    below, above = _split_trials(study, trials, (sampler._gamma or default_gamma)(finished))
    if sampler._group and sampler._group_decomposed_search_space is not None:
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
