"""The Optuna study behind a search: persisted in a journal, ASHA-stopped trials PRUNED, orphans closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tlsearch.results.study import make_storage, open_storage, storage_description
from tlsearch.search.policy.duplicates import MAX_REDRAWS
from tlsearch.search.study import StudySearch, close_orphans
from tlsearch.space import Continuation, build_space, make_sampler
from tlsearch.spec import Spec, validate_spec
from tlsearch.spec.objective import Objective

SPEC = validate_spec(
    {
        "name": "s",
        "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
        "data": {"builtin": "bbc-news"},
    }
)


def searcher(run_dir: Path, spec: Spec = SPEC, study_name: str = "s-1", **options: Any) -> StudySearch:
    return StudySearch(
        space=build_space(spec, num_blocks=6),
        objectives=(Objective("val_accuracy", "max"),),
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=make_storage(None, run_dir),
        **{"max_epochs": 3, **options},
    )


def run(
    search: StudySearch, trial_id: str, values: list[float], error: bool = False, stopped: bool = False
) -> None:
    """A trial as Tune drives the searcher; `stopped`: the scheduler stopped it on its last result,
    which Tune then passes to on_trial_complete only."""
    assert search.suggest(trial_id)["strategy"]
    for epoch, value in enumerate(values, start=1):
        result = {"val_accuracy": value, "epoch": epoch, "training_iteration": epoch}
        if not (stopped and epoch == len(values)):
            search.on_trial_result(trial_id, result)
    search.on_trial_complete(trial_id, None if error else result, error=error)


def test_states_in_the_journal_and_restore(tmp_path: Path) -> None:
    search = searcher(tmp_path)
    run(search, "stopped", [0.4])  # ASHA stopped it after one of three epochs
    run(search, "full", [0.5, 0.6, 0.7])
    run(search, "broken", [0.3], error=True)
    search.suggest("orphan")  # started, then its driver died
    checkpoint = tmp_path / "searcher.pkl"
    search.save(str(checkpoint))

    study = optuna.load_study(study_name="s-1", storage=open_storage(storage_description(None, tmp_path)))
    states = [t.state for t in study.trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    pruned, complete = study.trials[0], study.trials[1]
    assert pruned.intermediate_values == {1: 0.4} and pruned.value == 0.4  # its last intermediate value
    assert complete.value == 0.7 and complete.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}

    restored = searcher(tmp_path)
    restored.restore(str(checkpoint))  # what Tuner.restore does with the searcher's state
    run(restored, "after-restore", [0.5, 0.55, 0.8])
    assert close_orphans("s-1", make_storage(None, tmp_path)) == 1
    study = optuna.load_study(study_name="s-1", storage=make_storage(None, tmp_path))
    assert [t.state for t in study.trials][3:] == [TrialState.FAIL, TrialState.COMPLETE]
    assert all(t.state.is_finished() for t in study.trials)


def discrete_searcher(
    run_dir: Path, *, skip_duplicates: bool = True, head_lr: object = (0.001, 0.01, 0.1)
) -> StudySearch:
    """Six configurations in all: linear probe × 3 head LRs × 2 batch sizes."""
    spec = validate_spec(
        {
            **SPEC.model_dump(mode="json", include={"name", "model", "data"}),
            "strategies": {
                "linear_probe": {"head_lr": list(head_lr) if isinstance(head_lr, tuple) else head_lr},
                "common": {"weight_decay": [0.0], "batch_size": [16, 32]},
            },
            "search": {"seed_configs": "none", "sampler": {"n_startup_trials": 2, "seed": 0}},
        }
    )
    return searcher(run_dir, spec, "d-1", max_epochs=1, skip_duplicates=skip_duplicates)


def _take_all_six(search: StudySearch) -> set:
    configs = []
    for i in range(6):
        configs.append(search.suggest(f"t{i}"))
        if i % 2:  # some finish, some still run: both count as taken
            search.on_trial_complete(f"t{i}", {"val_accuracy": 0.1 * i, "epoch": 1})
    return {(c["linear_probe"]["head_lr"], c["common"]["batch_size"]) for c in configs}


def test_no_configuration_is_trained_twice(tmp_path: Path) -> None:
    """Choices only: the space lists its six configurations and untried ones run in place of repeats."""
    search = discrete_searcher(tmp_path)
    assert len(_take_all_six(search)) == 6  # every configuration once
    study = optuna.load_study(study_name="d-1", storage=open_storage(storage_description(None, tmp_path)))
    skipped = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in skipped) and len(skipped) == search.duplicates_skipped
    assert len(skipped) <= 6  # one skipped draw per repeat at most: no rounds of redraws
    # Every configuration taken: the search is complete, no repeat starts.
    assert search.suggest("t6") == Searcher.FINISHED


def test_redraws_where_the_space_cannot_be_listed(tmp_path: Path) -> None:
    """A float range with a step is not listed: repeated draws are redrawn at random instead."""
    search = discrete_searcher(tmp_path, head_lr={"low": 0.1, "high": 0.3, "step": 0.1})
    assert search._listed.untried(search.study) is None
    assert len(_take_all_six(search)) == 6
    before = search.duplicates_skipped
    assert search.suggest("t6") is not None  # exhausted after MAX_REDRAWS draws
    assert search.duplicates_skipped == before + 1 + MAX_REDRAWS
    assert search.suggest("t7") is not None and search.duplicates_skipped == before + 1 + MAX_REDRAWS


def test_duplicates_run_when_asked(tmp_path: Path) -> None:
    search = discrete_searcher(tmp_path, skip_duplicates=False)
    configs = [search.suggest(f"t{i}") for i in range(12)]
    keys = [(c["linear_probe"]["head_lr"], c["common"]["batch_size"]) for c in configs]
    assert len(set(keys)) < len(keys) and search.duplicates_skipped == 0


def test_a_stopped_trial_keeps_the_value_it_was_stopped_on(tmp_path: Path) -> None:
    search = searcher(tmp_path)
    run(search, "cut", [0.5, 0.45], stopped=True)  # ASHA judged epoch 2 and stopped it there
    (pruned,) = optuna.load_study(study_name="s-1", storage=make_storage(None, tmp_path)).trials
    assert pruned.state == TrialState.PRUNED
    assert pruned.intermediate_values == {1: 0.5, 2: 0.45} and pruned.last_step == 2


# --- ASHA's promotion once a listed space has been tried in full -------------------------------


class _FakeTrial:
    """What ASHA reads of a Tune trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def six_configs_in_order(run_dir: Path, order: list[tuple[float, int]], promote: bool = True) -> Any:
    """The six-configuration space with every configuration a seed config, in `order`, under
    ASHA that cuts after epoch 1 of 2 and keeps half."""
    from tlsearch.search.runner import search_algorithms

    spec = validate_spec(
        {
            **SPEC.model_dump(mode="json", include={"name", "model", "data"}),
            "strategies": {
                "linear_probe": {"head_lr": [0.001, 0.01, 0.1]},
                "common": {"weight_decay": [0.0], "batch_size": [16, 32]},
            },
            "search": {
                "max_epochs": 2,
                "metric": "val_accuracy",
                "num_samples": 20,
                "scheduler": {"grace_period": 1, "reduction_factor": 2, "promote": promote},
                "seed_configs": [
                    {"strategy": "linear_probe", "head_lr": lr, "batch_size": bs, "weight_decay": 0.0}
                    for lr, bs in order
                ],
            },
        }
    )
    return search_algorithms(spec, build_space(spec, num_blocks=6), "p-1", make_storage(None, run_dir))


def drive(
    search: StudySearch,
    scheduler: Any,
    curves: dict[tuple[float, int], list[float]],
    trials: int | None = None,
    first: int = 0,
    suggested: list | None = None,
) -> list:
    """Trials one at a time as Tune drives them: the scheduler decides on each result first, the
    searcher hears it if the trial goes on and its end either way; `trials` of them, or (None) until
    the searcher finishes the search. Returns (config, epochs run) of each; `suggested` gets every
    config. A trial that continues a stopped one reports the epoch it continues from again first,
    as the training loop does."""
    from ray.tune.schedulers import TrialScheduler

    ran = []
    for i in range(first, first + (trials or 30)):
        config = search.suggest(f"t{i}")
        if suggested is not None:
            suggested.append(config)
        if config == Searcher.FINISHED:
            return ran
        _, continuation = Continuation.split(config)
        start = continuation.epoch if continuation else 1
        key = (config["linear_probe"]["head_lr"], config["common"]["batch_size"])
        trial = _FakeTrial(f"t{i}")
        scheduler.on_trial_add(None, trial)
        for epoch, value in enumerate(curves[key][start - 1 :], start=start):
            result = {"val_accuracy": value, "epoch": epoch, "training_iteration": epoch}
            decision = scheduler.on_trial_result(None, trial, result)
            if decision != TrialScheduler.STOP:
                search.on_trial_result(f"t{i}", result)
            if decision == TrialScheduler.STOP or epoch == len(curves[key]):
                scheduler.on_trial_complete(None, trial, result)
                search.on_trial_complete(f"t{i}", result)
                break
        ran.append((key, epoch))
    assert trials is not None, "the search never finished"
    return ran


# Epoch-1 values 0.9 > 0.8 > 0.7 > 0.3 > 0.2 > 0.1; C = (0.01, 16) ends best (0.99) but starts third.
A, B, C, D, E, F = (0.1, 32), (0.1, 16), (0.01, 16), (0.01, 32), (0.001, 16), (0.001, 32)
CURVES = {A: [0.9, 0.91], B: [0.8, 0.85], C: [0.7, 0.99], D: [0.3, 0.4], E: [0.2, 0.3], F: [0.1, 0.2]}


def test_a_stopped_configuration_asha_would_keep_now_runs_again(tmp_path: Path) -> None:
    """In the order A..F ASHA keeps only A: B and C are below the bar of what came before them. With
    all six in, B and C are in the top half of rung 1: they run again (B first, the better value
    there), ASHA keeps them now, and C reaches the best value of the space. D, E, F are not. Each
    promoted trial continues the stopped one from the epoch it was stopped at."""
    search, scheduler = six_configs_in_order(tmp_path, [A, B, C, D, E, F])
    suggested: list = []
    ran = drive(search, scheduler, CURVES, suggested=suggested)
    assert ran == [(A, 2), (B, 1), (C, 1), (D, 1), (E, 1), (F, 1), (B, 2), (C, 2)]
    assert search.promotions == 2
    continued = [Continuation.split(c)[1] for c in suggested if isinstance(c, dict)]
    assert continued == [None] * 6 + [Continuation("t1", 1), Continuation("t2", 1)]
    study = optuna.load_study(study_name="p-1", storage=make_storage(None, tmp_path))
    promoted = [t for t in study.trials if "promoted_from" in t.user_attrs]
    assert [(t.user_attrs["promoted_from"], t.user_attrs["promoted_at"]) for t in promoted] == [
        (1, 1.0),
        (2, 1.0),
    ]
    assert [t.state for t in promoted] == [TrialState.COMPLETE] * 2 and promoted[1].value == 0.99


def test_promotion_after_a_restore(tmp_path: Path) -> None:
    """The mirrored rungs travel with the searcher's state (Tuner.restore), as ASHA's with Tune's."""
    import pickle

    search, scheduler = six_configs_in_order(tmp_path, [A, B, C, D, E, F])
    assert len(drive(search, scheduler, CURVES, trials=6)) == 6
    search.save(str(tmp_path / "searcher.pkl"))
    restored = StudySearch.__new__(StudySearch)  # Tune unpickles the searcher, then restores its state
    restored.restore(str(tmp_path / "searcher.pkl"))
    suggested: list = []
    ran = drive(restored, pickle.loads(pickle.dumps(scheduler)), CURVES, first=6, suggested=suggested)
    assert ran == [(B, 2), (C, 2)] and restored.promotions == 2
    assert [Continuation.split(c)[1] for c in suggested[:2]] == [Continuation("t1", 1), Continuation("t2", 1)]


def test_no_promotion_when_switched_off(tmp_path: Path) -> None:
    search, scheduler = six_configs_in_order(tmp_path, [A, B, C, D, E, F], promote=False)
    assert drive(search, scheduler, CURVES) == [(A, 2), (B, 1), (C, 1), (D, 1), (E, 1), (F, 1)]


def test_the_searcher_waits_while_a_running_trial_may_change_the_rungs(tmp_path: Path) -> None:
    """Every configuration taken, one still running, none promotable (in rising order ASHA kept
    every trial): nothing now (Tune asks again) rather than the end of the search, which comes when
    the last trial has ended and still none is promotable."""
    search, scheduler = six_configs_in_order(tmp_path, [F, E, D, C, B, A])
    assert drive(search, scheduler, CURVES, trials=5) == [(F, 2), (E, 2), (D, 2), (C, 2), (B, 2)]
    assert search.suggest("t5") is not None  # A starts and runs
    assert search.suggest("t6") is None
    search.on_trial_complete("t5", {"val_accuracy": 0.91, "epoch": 2})
    assert search.suggest("t7") == Searcher.FINISHED and search.promotions == 0
