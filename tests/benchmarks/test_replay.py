"""The learning-curve table and its replay: lookups, the discretized space, scoring a replayed search."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.tune.search import Searcher

from benchmarks.learning_curves import DEMO_SPEC, synthetic_curves
from benchmarks.replay import (
    LearningCurves,
    ReplayEvent,
    Trace,
    config_key,
    curves_from_run,
    grid_seed_configs,
    replay_spec,
)
from tlsearch.errors import UserInputError
from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, append_jsonl, write_tables
from tlsearch.search.runner import search_algorithms
from tlsearch.space import build_space

GRID = {
    "linear_probe": {"head_lr": [1e-2, 1e-1]},
    "full": {"head_lr": 1e-3, "backbone_lr": [1e-5, 1e-4, 1e-3], "layer_decay": 0.75},
    "lora": {"head_lr": 1e-3, "lr": [1e-3, 3e-3], "rank": [4, 8], "alpha": 16.0, "dropout": 0.05},
    "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16},
}
BASE = yaml.safe_load(DEMO_SPEC.read_text())


@pytest.fixture(scope="module")
def curves() -> LearningCurves:
    return synthetic_curves({**GRID, "lora": {**GRID["lora"], "targets": "attention"}}, max_epochs=3)


def test_a_config_finds_its_rows_nested_or_flat(curves: LearningCurves) -> None:
    nested = {
        "strategy": "lora",
        "lora": {
            "head_lr": 1e-3,
            "lr": 3e-3,
            "rank": 8,
            "alpha": 16.0,
            "dropout": 0.05,
            "targets": "attention",
        },
        "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16},
    }
    rows = curves.curve(nested)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["lora/lr"] == 3e-3 and r["lora/rank"] == 8 for r in rows)
    flat = {k: v for k, v in rows[0].items() if k == "strategy" or "/" in k}
    assert curves.curve(flat) == rows
    assert config_key(nested) == config_key({**flat, "full/head_lr": None})  # other strategies' empty columns
    with pytest.raises(KeyError, match="not in the learning-curve table"):
        curves.curve({**flat, "lora/rank": 16})


def test_the_table_round_trips_through_parquet(curves: LearningCurves, tmp_path: Path) -> None:
    again = LearningCurves.read(curves.write(tmp_path / "t.parquet"))

    def filled(rows: tuple[dict, ...]) -> list[dict]:  # Parquet gives every row every column
        return [{k: v for k, v in r.items() if v is not None} for r in rows]

    assert filled(again.rows) == filled(curves.rows) and again.source == curves.source
    assert again.curves.keys() == curves.curves.keys()


def test_a_table_must_be_a_full_grid_with_equal_curves(curves: LearningCurves) -> None:
    missing = tuple(r for r in curves.rows if r["config_id"] != "lora-01")  # lr 1e-3, rank 4
    with pytest.raises(UserInputError, match="not a full grid"):
        LearningCurves(missing)
    short = tuple(r for r in curves.rows if not (r["config_id"] == "full-02" and r["epoch"] == 3))
    with pytest.raises(UserInputError, match="as many epochs"):
        LearningCurves(short)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_the_discretized_space_proposes_only_table_configs(curves: LearningCurves, sampler: str) -> None:
    spec = replay_spec(
        BASE, curves, num_samples=40, sampler={"type": sampler, "n_startup_trials": 5, "seed": 1}
    )
    assert spec.strategies.lora.rank.choices == (4, 8) and spec.strategies.lora.targets.choices == (
        "attention",
    )
    searcher, _ = search_algorithms(spec, build_space(spec), "replay-test", storage=None)
    proposed: list[str] = []
    for i in range(40):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:  # every configuration of the table has run (skip_duplicates)
            assert len(proposed) == len(curves.curves)
            break
        rows = curves.curve(config)  # raises for a configuration the table lacks
        proposed.append(rows[0]["config_id"])
        for row in rows:
            searcher.on_trial_result(f"t{i}", {"val_f1_macro": row["val_f1_macro"], "epoch": row["epoch"]})
        searcher.on_trial_complete(f"t{i}", {"val_f1_macro": rows[-1]["val_f1_macro"], "epoch": 3})
    # The demo's seed configs came first, and the sampler saw more than them.
    assert {"linear_probe-01", "full-01", "lora-01"} <= set(proposed) and len(proposed) > 4
    assert len(set(proposed)) == len(proposed)  # none twice


def test_grid_seed_configs_enumerate_the_table_in_any_order(curves: LearningCurves) -> None:
    order = list(reversed(range(len(curves.curves))))
    spec = replay_spec(BASE, curves, num_samples=len(order), seed_configs=grid_seed_configs(curves, order))
    searcher, _ = search_algorithms(spec, build_space(spec), "grid-test", storage=None)
    ids = [curves.curve(searcher.suggest(f"t{i}"))[0]["config_id"] for i in range(len(order))]
    assert ids == [list(curves.curves.values())[i][0]["config_id"] for i in order]


def events(*rows: tuple[str, int, float, float], strategy: str = "full") -> list[ReplayEvent]:
    return [ReplayEvent(t, t, strategy, e, v, c, 0.0) for t, e, v, c in rows]


def test_trace_cost_to_target_and_anytime_regret() -> None:
    trace = Trace.of(events(("a", 1, 0.80, 10.0), ("a", 2, 0.90, 5.0), ("b", 1, 0.948, 20.0)), "max")
    assert trace.costs == (10.0, 15.0, 35.0) and trace.best == (0.80, 0.90, 0.948)
    assert trace.cost_to_reach(0.95, "max", tolerance_points=0.5) == 35.0
    assert trace.cost_to_reach(0.95, "max", tolerance_points=0.1) == float("inf")
    assert trace.regret_at([5.0, 10.0, 20.0, 100.0], 0.95, "max") == pytest.approx(
        [float("inf"), 15.0, 5.0, 0.2]
    )
    assert trace.trials_by_strategy == {"full": 2} and trace.cost_by_strategy == {"full": 35.0}
    losses = Trace.of(events(("a", 1, 0.5, 1.0), ("a", 2, 0.3, 1.0)), "min")
    assert losses.regret(0.25, "min") == pytest.approx([25.0, 5.0])


def _record_trial(run_dir: Path, trial_id: str, config: dict, epochs: list[tuple[float, float]]) -> None:
    """What ResultsRecorder writes for a trial: its start, each epoch (cumulative wall and device
    seconds, a value), its end."""
    append_jsonl(run_dir / EVENTS_LOG, {"event": "start", "trial_id": trial_id, "config": config, "path": ""})
    for epoch, (device_s, value) in enumerate(epochs, start=1):
        append_jsonl(
            run_dir / EPOCHS_LOG,
            {
                "trial_id": trial_id,
                "epoch": epoch,
                "strategy": config["strategy"],
                "val_f1_macro": value,
                "val_loss": 1 - value,
                "epoch_s": 1.0,
                "wall_s": device_s,
                "device_s": device_s,
            },
        )
    append_jsonl(run_dir / EVENTS_LOG, {"event": "end", "trial_id": trial_id, "status": "ok"})


def test_a_finished_grid_search_becomes_a_table(tmp_path: Path) -> None:
    common = {"common/weight_decay": 0.01, "common/warmup_fraction": 0.1, "common/batch_size": 16}
    for i, lr in enumerate((1e-2, 1e-1)):
        config = {"strategy": "linear_probe", "linear_probe/head_lr": lr, **common}
        _record_trial(tmp_path, f"t{i}", config, [(6.0, 0.5 + i / 10), (7.5, 0.6 + i / 10)])
    write_tables(tmp_path, "val_f1_macro", "max", 2)
    curves = curves_from_run(tmp_path)
    first, second = curves.curve({"strategy": "linear_probe", "linear_probe/head_lr": 1e-2, **common})
    assert (first["config_id"], first["epoch_device_s"], second["epoch_device_s"]) == (
        "linear_probe-01",
        6.0,
        1.5,
    )
    assert second["device_s"] == 7.5 and second["val_f1_macro"] == 0.6
    assert curves.best("val_f1_macro") == pytest.approx(0.7)

    _record_trial(
        tmp_path, "t2", {"strategy": "linear_probe", "linear_probe/head_lr": 3e-2, **common}, [(6.0, 0.5)]
    )
    write_tables(tmp_path, "val_f1_macro", "max", 2)
    with pytest.raises(UserInputError, match="did not run every epoch"):
        curves_from_run(tmp_path)


def test_the_simulated_replay_runs_each_trial_on_its_own_device_clock(curves: LearningCurves) -> None:
    from benchmarks.replay import simulate_replay

    # Every configuration once, no early stopping: every recorded epoch arrives, on two slots.
    spec = replay_spec(
        BASE,
        curves,
        num_samples=len(curves.curves),
        seed_configs=grid_seed_configs(curves),
        scheduler={"type": "fifo"},
    )
    result = simulate_replay(spec, curves, max_concurrent=2)
    assert result.trials == len(curves.curves) and result.errors == 0
    replayed = {(e.config_id, e.epoch): e.value for e in result.events}
    assert replayed == {(r["config_id"], r["epoch"]): r["val_f1_macro"] for r in curves.rows}
    times = [e.time for e in result.events]
    assert times == sorted(times)  # results arrive when their epoch's device-seconds have passed
    # Two slots, each busy from its first trial's start to its last trial's end: the search ends
    # after at least half of all the device-seconds, and a freed slot starts its next trial at once.
    total = sum(curves.full_cost())
    assert total / 2 <= times[-1] < total
    ends = {}
    for e in result.events:
        ends[e.trial_id] = e.time
    starts = sorted(result.trial_starts.values())
    assert starts[:2] == [0.0, 0.0] and all(s in set(ends.values()) for s in starts[2:])


def test_the_simulated_replay_stops_trials_where_asha_does(curves: LearningCurves) -> None:
    from benchmarks.replay import simulate_replay

    spec = replay_spec(
        BASE, curves, num_samples=8, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}
    )
    result = simulate_replay(spec, curves, max_concurrent=2)
    epochs_by_trial: dict[str, list[int]] = {}
    for e in result.events:
        epochs_by_trial.setdefault(e.trial_id, []).append(e.epoch)
    assert result.trials == 8 == len(epochs_by_trial)
    assert all(epochs == list(range(1, len(epochs) + 1)) for epochs in epochs_by_trial.values())
    assert any(len(epochs) < curves.max_epochs for epochs in epochs_by_trial.values())  # some were cut
    assert any(len(epochs) == curves.max_epochs for epochs in epochs_by_trial.values())
    assert len(set(e.config_id for e in result.events)) == 8  # no configuration trained twice
