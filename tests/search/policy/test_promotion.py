"""ASHA's promotion on its own: the mirror of Ray's rungs, and which stopped trial runs again."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tests.search.policy.studies import ask
from tests.search.test_study import _FakeTrial
from tlsearch.search.policy.promotion import AshaRungs, Promotion
from tlsearch.spec.objective import Objective


def test_asha_rungs_mirror_rays_bracket() -> None:
    """The searcher's copy of ASHA's rungs records what Ray's AsyncHyperBandScheduler records, on
    the same results in the same order (epochs and device-seconds; max and min)."""
    import random

    from ray.tune.schedulers import ASHAScheduler

    for time_attr, grace, top, rf, mode in [
        ("epoch", 1, 4, 3.0, "max"),
        ("epoch", 1, 8, 2.0, "min"),
        ("device_s", 12.5, 300.0, 2.5, "max"),
    ]:
        scheduler = ASHAScheduler(
            time_attr=time_attr, metric="m", mode=mode, max_t=top, grace_period=grace,
            reduction_factor=rf, stop_last_trials=False,
        )  # fmt: skip
        rungs = AshaRungs(time_attr, Objective("m", mode), grace, top, rf)
        bracket = scheduler._brackets[0]  # Ray's internals: what the mirror must agree with
        assert rungs.milestones == [milestone for milestone, _ in bracket._rungs]
        rng = random.Random(0)
        clocks = {f"t{i}": 0.0 for i in range(12)}
        for trial_id in clocks:
            scheduler.on_trial_add(None, _FakeTrial(trial_id))
        stopped = set()
        for _ in range(200):
            trial_id = rng.choice([t for t in clocks if t not in stopped] or ["none"])
            if trial_id == "none":
                break
            clocks[trial_id] += 1 if time_attr == "epoch" else rng.uniform(5, 60)
            result = {time_attr: clocks[trial_id], "m": rng.random()}
            trial = _FakeTrial(trial_id)
            if scheduler.on_trial_result(None, trial, result) == "STOP":
                stopped.add(trial_id)
            rungs.record(trial_id, result)
        # Both signed so that larger is better.
        assert {m: rec for m, rec in rungs.recorded.items() if rec} == {
            m: rec for m, rec in bracket._rungs if rec
        }
        assert stopped and len(rungs.recorded) > 1  # the test exercised cuts and several rungs


def test_the_highest_rung_then_the_best_value_runs_again_once_each() -> None:
    """Rung 1 holds a 0.9, b 0.8, c 0.1, d 0.2 (its bar: their median, 0.5), rung 2 a alone. ASHA
    stopped a at rung 2, b and c at rung 1: a comes first (the higher rung), then b; c is below the
    bar, and d ran to the end."""
    study = optuna.create_study(direction="maximize")
    promotion = Promotion(
        AshaRungs("epoch", Objective("m", "max"), grace_period=1, max_t=4, reduction_factor=2)
    )
    curves = {"a": [0.9, 0.95], "b": [0.8], "c": [0.1], "d": [0.2, 0.3, 0.4, 0.5]}
    trials = {trial_id: ask(study, x=x) for x, trial_id in enumerate(curves, start=1)}
    for trial_id, values in curves.items():
        for epoch, value in enumerate(values, start=1):
            trials[trial_id].report(value, epoch)
            promotion.record(trial_id, {"epoch": epoch, "m": value}, stopped=epoch == len(values) < 4)
        study.tell(trials[trial_id], values[-1] if len(values) == 4 else None, state=(
            TrialState.COMPLETE if len(values) == 4 else TrialState.PRUNED
        ))  # fmt: skip
    assert promotion.rungs.stopped == {"a": 2.0, "b": 1.0, "c": 1.0}
    assert promotion.candidate(study, trials) == ("a", 2.0)
    assert promotion.take(study, trials["a"], 2.0) == 2  # continues from its last epoch
    rerun = ask(study)  # what the study has queued: a's configuration, marked
    assert rerun.params == {"x": 1} and rerun.user_attrs == {"promoted_from": 0, "promoted_at": 2.0}
    assert promotion.candidate(study, trials) == ("b", 1.0)
    study.tell(ask(study, x=2), 0.8)  # a trial of b's configuration ran meanwhile: b is no candidate
    assert promotion.candidate(study, trials) is None
