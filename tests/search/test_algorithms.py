"""The searcher and scheduler every search (and the learning-curve replay) runs with, from the spec."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from tlsearch.search.runner import search_algorithms
from tlsearch.search.study import StudySearch
from tlsearch.space import build_space
from tlsearch.spec import validate_spec

BASE = {
    "name": "a",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def build(**search: object) -> tuple[StudySearch, object]:
    spec = validate_spec({**BASE, "search": {"metric": "val_f1_macro", "max_epochs": 4, **search}})
    return search_algorithms(spec, build_space(spec, num_blocks=6), "a-1", storage=None)


def rungs(scheduler: ASHAScheduler) -> list[float]:
    return sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs)


def test_asha_counts_epochs_by_default_and_seed_configs_come_first() -> None:
    searcher, scheduler = build(scheduler={"grace_period": 1, "reduction_factor": 2})
    assert isinstance(scheduler, ASHAScheduler) and scheduler._time_attr == "epoch"
    assert rungs(scheduler) == [1, 2, 4]
    assert [searcher.suggest(f"t{i}")["strategy"] for i in range(4)] == [
        "linear_probe",
        "partial",
        "full",
        "lora",
    ]


def test_fifo_stops_nothing() -> None:
    assert isinstance(build(scheduler={"type": "fifo"})[1], FIFOScheduler)


def test_asha_on_device_seconds_compares_trials_at_equal_cost() -> None:
    _, scheduler = build(
        scheduler={"time_attr": "device_s", "grace_period_s": 30, "max_t_s": 120, "reduction_factor": 2}
    )
    assert scheduler._time_attr == "device_s" and rungs(scheduler) == [30, 60, 120]
    cheap, costly, worse = (Trial("replay", stub=True, trial_id=t) for t in ("cheap", "costly", "worse"))
    for trial in (cheap, costly, worse):
        scheduler.on_trial_add(None, trial)

    def report(trial: Trial, epoch: int, device_s: float, value: float) -> str:
        return scheduler.on_trial_result(
            None, trial, {"epoch": epoch, "device_s": device_s, "val_f1_macro": value}
        )

    # Four cheap epochs reach the first rung (30 s) after the fourth; one costly epoch already does.
    assert [report(cheap, e, 8.0 * e, 0.8) for e in (1, 2, 3)] == [TrialScheduler.CONTINUE] * 3
    assert report(cheap, 4, 32.0, 0.8) == TrialScheduler.CONTINUE  # the first at the rung: no cutoff yet
    assert report(costly, 1, 35.0, 0.9) == TrialScheduler.CONTINUE
    # A trial below the rung's median at equal cost is stopped, whatever its epoch.
    assert report(worse, 1, 31.0, 0.5) == TrialScheduler.STOP
