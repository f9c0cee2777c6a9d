"""Duplicate skipping on a real study: what a repeat is, how a skipped draw is recorded, the redraws."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests.search.policy.studies import ask
from tlsearch.search.policy.duplicates import MAX_REDRAWS, Duplicates, random_redraws


def test_a_repeat_has_the_parameters_of_a_trial_that_runs_or_ran() -> None:
    study, duplicates = optuna.create_study(), Duplicates()
    first = ask(study, x=1)
    assert duplicates.earlier(study, first) is None  # a trial does not repeat itself
    again, other = ask(study, x=1), ask(study, x=2)
    assert duplicates.earlier(study, again) == first.number and duplicates.earlier(study, other) is None
    duplicates.skip(study, again, first.number)
    skipped = study.trials[again.number]
    assert skipped.state == TrialState.FAIL and skipped.user_attrs == {"duplicate_of": first.number}
    assert duplicates.skipped == 1
    for x, state in ((3, TrialState.COMPLETE), (4, TrialState.PRUNED)):
        ran = ask(study, x=x)
        study.tell(ran, 0.5 if state == TrialState.COMPLETE else None, state=state)
        repeat = ask(study, x=x)
        assert duplicates.earlier(study, repeat) == ran.number
        study.tell(repeat, state=TrialState.FAIL)
    study.tell(first, state=TrialState.FAIL)  # failed trials (and skipped draws) taught nothing
    third = ask(study, x=1)
    assert duplicates.earlier(study, third) is None


def test_redraws_are_random_seeded_from_the_study_and_give_its_sampler_back() -> None:
    def redrawn(study: optuna.Study) -> list[int]:
        with random_redraws(study) as redraws:
            return [ask(study).params["x"] for _, _ in zip(range(5), redraws, strict=False)]

    tpe = optuna.samplers.TPESampler(seed=0)
    studies = [optuna.create_study(sampler=tpe), optuna.create_study(sampler=optuna.samplers.TPESampler())]
    for study in studies:
        ask(study, x=1)
    assert redrawn(studies[0]) == redrawn(studies[1])  # the same history draws the same
    assert studies[0].sampler is tpe
    with random_redraws(studies[0]) as redraws:
        assert [isinstance(studies[0].sampler, optuna.samplers.RandomSampler) for _ in redraws] == [
            True
        ] * MAX_REDRAWS
    assert studies[0].sampler is tpe


def test_giving_up_lets_repeats_run(capsys: pytest.CaptureFixture[str]) -> None:
    duplicates = Duplicates()
    duplicates.give_up("no untried configuration in 32 random draws", 7)
    assert not duplicates.enabled and "looks exhausted after 7 trials" in capsys.readouterr().out
