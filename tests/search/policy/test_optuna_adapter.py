"""The adapter over Ray's and Optuna's internals: the shapes it expects, checked on the installed
libraries (an upgrade that changes one fails here, by name), and what it does with them."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from ray.tune.search.optuna import OptunaSearch

from tests.search.test_study import SPEC, discrete_searcher, run, searcher
from tlsearch.search.policy import optuna_adapter
from tlsearch.search.policy.optuna_adapter import (
    RAY_SEARCH_ATTRIBUTES,
    TPE_ATTRIBUTES,
    TPE_FUNCTIONS,
    TPE_METHODS,
    TPE_MODULE,
    OptunaSearchAdapter,
)
from tlsearch.search.study import StudySearch
from tlsearch.space import build_space, make_sampler
from tlsearch.spec.objective import Objective

RAY = f"ray {ray.__version__}"
OPTUNA = f"optuna {optuna.__version__}"
ADAPTER = "tlsearch/search/policy/optuna_adapter.py"


def check_attributes(owner: Any, expected: dict[str, Any], library: str) -> None:
    for name, types in expected.items():
        where = f"{library}: {type(owner).__name__}.{name}, which {ADAPTER} reads"
        assert hasattr(owner, name), f"{where}, is gone"
        value = getattr(owner, name)
        assert isinstance(value, types), f"{where}, is a {type(value).__name__}, not one of {types}"


def check_parameters(function: Any, expected: tuple[str, ...], where: str) -> None:
    assert callable(function), f"{where} is not callable"
    parameters = tuple(p for p in inspect.signature(function).parameters if p != "self")
    assert parameters[: len(expected)] == expected, f"{where} takes {parameters}, not {expected}"


def test_rays_optuna_search_has_the_state_the_adapter_reads(tmp_path: Path) -> None:
    search = OptunaSearch(
        space=build_space(SPEC, num_blocks=6), metric="val_accuracy", mode="max", sampler=make_sampler(SPEC)
    )
    check_attributes(search, RAY_SEARCH_ATTRIBUTES, RAY)
    search.suggest("t")
    asked = search._ot_trials.get("t")
    assert isinstance(asked, optuna.Trial), (
        f"{RAY}: OptunaSearch._ot_trials holds no optuna.Trial per Tune trial"
    )
    search.on_trial_complete("t", {"val_accuracy": 0.5})
    assert "t" in search._completed_trials, f"{RAY}: OptunaSearch._completed_trials misses a told trial"
    search._ot_trials.pop("t")
    search.suggest("t")
    assert search._ot_trials["t"].number != asked.number, (
        f"{RAY}: OptunaSearch.suggest reuses a forgotten trial"
    )


def test_tpe_has_the_internals_the_ranking_reads(tmp_path: Path) -> None:
    search = discrete_searcher(tmp_path)  # TPE as the spec makes it: multivariate, grouped
    for sampler in (search.study.sampler, optuna.samplers.TPESampler()):  # and independent TPE
        check_attributes(sampler, TPE_ATTRIBUTES, OPTUNA)
        for name, parameters in TPE_METHODS.items():
            where = f"{OPTUNA}: TPESampler.{name} ({ADAPTER})"
            check_parameters(getattr(sampler, name, None), parameters, where)
    module = importlib.import_module(TPE_MODULE)
    for name, parameters in TPE_FUNCTIONS.items():
        check_parameters(
            getattr(module, name, None), parameters, f"{OPTUNA}: {TPE_MODULE}.{name} ({ADAPTER})"
        )
    for i in range(3):
        run(search, f"t{i}", [0.1 * i])
    study, sampler = search.study, search.study.sampler
    spaces = sampler._group_decomposed_search_space.calculate(study).search_spaces
    assert spaces and all(isinstance(space, dict) for space in spaces), (
        f"{OPTUNA}: TPESampler._group_decomposed_search_space.calculate(study).search_spaces is no list "
        f"of {{name: distribution}} ({ADAPTER})"
    )
    assert isinstance(sampler._search_space.calculate(study), dict), (
        f"{OPTUNA}: TPESampler._search_space.calculate(study) is no {{name: distribution}} ({ADAPTER})"
    )


def test_the_adapter_names_what_it_reads(tmp_path: Path) -> None:
    search = searcher(tmp_path)
    config = search.suggest("t")
    assert config is not None and set(search.asked) == {"t"} and search.unfinished()
    number = search.asked["t"].number
    assert search.forget("t").number == number and "t" not in search.asked
    search.suggest("t")  # asked again: a new Optuna trial
    assert search.asked["t"].number == number + 1 and not search.is_told("t")
    search.on_trial_complete("t", {"val_accuracy": 0.5, "epoch": 3})
    assert search.is_told("t") and not search.unfinished()


def test_a_second_objective_is_data(tmp_path: Path) -> None:
    """Ray takes several objectives as lists (a multi-objective study); StudySearch, which records
    each epoch as an intermediate value, says that it takes one for now."""
    objectives = (Objective("val_accuracy", "max"), Objective("val_loss", "min"))
    two = OptunaSearchAdapter(space=build_space(SPEC, num_blocks=6), objectives=objectives)
    assert two.metric == ["val_accuracy", "val_loss"]
    assert two.study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    with pytest.raises(NotImplementedError, match="one objective"):
        StudySearch(space=build_space(SPEC, num_blocks=6), objectives=objectives, max_epochs=3)


def test_ranking_falls_back_when_tpe_internals_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranking reads TPESampler's internals: where they are not what it expects, it says so once
    and returns None (the searcher then lets TPE draw as usual)."""
    monkeypatch.setattr(optuna_adapter, "_warned_tpe_internals", False)
    search = discrete_searcher(tmp_path)
    for i in range(3):
        run(search, f"t{i}", [0.1 * i])
    points = search._listed.untried(search.study)
    assert points and optuna_adapter.tpe_acquisition(search.study, search.study.sampler, points) is not None
    sampler = search.study.sampler
    monkeypatch.setattr(sampler, "_build_parzen_estimator", None)  # an Optuna without this method
    with pytest.warns(UserWarning, match="cannot rank untried configurations"):
        assert optuna_adapter.tpe_acquisition(search.study, sampler, points) is None
    assert optuna_adapter.tpe_acquisition(search.study, sampler, points) is None  # warned once
