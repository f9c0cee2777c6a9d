"""The learning-curve table recorded through `tlsearch run`, and replayed through real Tune + Optuna."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.learning_curves import DEMO_SPEC, GRID, QUICK_GRID, quick_base, record, synthetic_curves
from benchmarks.replay import grid_seed_configs, replay_spec, run_replay
from benchmarks.search_efficiency import evaluate
from tests.integration.conftest import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_recorded_grid_replays_exactly(ray_connected: LocalCluster, tmp_path: Path) -> None:
    base = quick_base(tmp_path)
    grid = {**QUICK_GRID, "full": {**QUICK_GRID["full"], "backbone_lr": 1e-3}}  # 2 + 1 configurations
    curves, _, _ = record(base, grid, tmp_path / "curves.parquet")
    assert (tmp_path / "curves.parquet").exists()
    assert len(curves.curves) == 3 and curves.max_epochs == 2 and len(curves.rows) == 6
    for rows in curves.curves.values():
        first, second = rows
        assert first["epoch_device_s"] + second["epoch_device_s"] == pytest.approx(second["device_s"])
        assert first["epoch_device_s"] >= first["epoch_s"]  # the first epoch carries the trial's set-up
        assert all(0 <= r["val_f1_macro"] <= 1 for r in rows)

    # Every configuration once, no early stopping: each replayed epoch is the recorded one.
    spec = replay_spec(
        base, curves, num_samples=3, seed_configs=grid_seed_configs(curves), scheduler={"type": "fifo"}
    )
    result = run_replay(spec, curves, max_concurrent=2, storage_path=str(tmp_path / "replay"))
    assert result.errors == 0 and result.trials == 3
    replayed = {(e.config_id, e.epoch): (e.value, e.epoch_device_s) for e in result.events}
    recorded = {(r["config_id"], r["epoch"]): (r["val_f1_macro"], r["epoch_device_s"]) for r in curves.rows}
    assert replayed == recorded and len(result.events) == 6


def test_two_policies_replay_through_tune_and_optuna(ray_connected: LocalCluster) -> None:
    grid = {
        "linear_probe": {"head_lr": [1e-2, 1e-1]},
        "full": {"head_lr": [1e-3, 1e-2], "backbone_lr": [1e-5, 1e-4], "layer_decay": 0.75},
        "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16},
    }
    base = yaml.safe_load(DEMO_SPEC.read_text())
    curves = synthetic_curves(grid, max_epochs=4, seed=3)
    figures = evaluate(
        curves,
        base,
        policies=["tpe_asha", "random"],
        seeds=2,
        num_samples=4,
        max_concurrent=2,
        tolerance=0.5,
        log=lambda _: None,
    )
    assert figures["configs"] == 6 and figures["table_best"] == curves.best("val_f1_macro")
    assert "time_to_target_vs_random" in figures and set(figures["policies"]) == {"tpe_asha", "random"}
    assert set(figures["looser_targets"]) == {"1", "2"}
    # The demo's seed configurations (one per strategy in the table) and the cheapest way to the target.
    assert [s["config_id"].split("-")[0] for s in figures["seed_configs"]] == ["linear_probe", "full"]
    assert 0 < figures["oracle_cost_s"] <= max(curves.full_cost())
    assert figures["random_order_perfect_stopping_s"] >= figures["oracle_cost_s"]
    simulated = figures["random_search_simulated"]
    assert simulated["num_samples"] == 4 and 0 < simulated["hit_chance_per_trial"] <= 1
    assert "time_to_target_vs_random_simulated" in figures
    for run in figures["policies"]["tpe_asha"]["runs"] + figures["policies"]["random"]["runs"]:
        assert run["target_at_trial"] is None or 1 <= run["target_at_trial"] <= run["trials"]
    ours, random = figures["policies"]["tpe_asha"], figures["policies"]["random"]
    assert [r["errors"] for r in ours["runs"] + random["runs"]] == [0, 0, 0, 0]
    assert all(r["trials"] == 4 for r in ours["runs"] + random["runs"])
    assert random["runs"][0]["epochs"] == 16  # no early stopping: every trial ran its 4 epochs
    assert ours["settings"]["scheduler"]["type"] == "asha" and random["settings"]["seed_configs"] == "none"
    for policy in (ours, random):
        assert set(policy["time_to_target_s"]) == {"median", "q25", "q75"}
        assert len(policy["regret_curve"]["median"]) == len(figures["cost_grid_s"])
        assert set(policy["cost_share_by_strategy"]) == {"linear_probe", "full"}


def test_the_simulated_replay_is_tunes_with_one_trial_at_a_time(
    ray_connected: LocalCluster, tmp_path: Path
) -> None:
    """Without Tune's controller, the same searcher and scheduler called in Tune's order: with one
    slot, the same trials and epochs in the same order as the replay through Tune."""
    from benchmarks.replay import simulate_replay

    base = yaml.safe_load(DEMO_SPEC.read_text())
    curves = synthetic_curves(GRID, max_epochs=4, seed=5)  # 28 configurations
    for policy_changes in ({}, {"sampler": {"type": "random", "seed": 1}}):
        spec = replay_spec(base, curves, num_samples=12, **policy_changes)
        assert spec.search.scheduler.type == "asha"
        through_tune = run_replay(spec, curves, max_concurrent=1, storage_path=str(tmp_path / "replay"))
        simulated = simulate_replay(spec, curves, max_concurrent=1)
        assert through_tune.errors == 0 and simulated.trials == through_tune.trials == 12
        sequence = [(e.config_id, e.epoch, e.value) for e in through_tune.events]
        assert [(e.config_id, e.epoch, e.value) for e in simulated.events] == sequence
        assert len({e.epoch for e in simulated.events}) > 1 and len(sequence) < 12 * 4  # ASHA cut some


def test_promotion_through_tune_once_the_space_is_tried_in_full(
    ray_connected: LocalCluster, tmp_path: Path
) -> None:
    """More trials than the 28 configurations: once every one has run, what ASHA stopped and would
    keep now runs again. Through Tune the same as the simulated replay with one slot; with two,
    Tune waits while the searcher has nothing yet (a running trial may make one promotable), and
    the search ends by itself before num_samples."""
    from benchmarks.replay import simulate_replay

    base = yaml.safe_load(DEMO_SPEC.read_text())
    curves = synthetic_curves(GRID, max_epochs=4, seed=1)  # two promotions with one slot
    spec = replay_spec(base, curves, num_samples=40)
    through_tune = run_replay(spec, curves, max_concurrent=1, storage_path=str(tmp_path / "one"))
    simulated = simulate_replay(spec, curves, max_concurrent=1)
    assert through_tune.errors == 0 and through_tune.trials == simulated.trials == 30
    sequence = [(e.config_id, e.epoch, e.value) for e in through_tune.events]
    assert [(e.config_id, e.epoch, e.value) for e in simulated.events] == sequence
    # The two promoted trials continue configurations ASHA stopped: first the epoch it stopped them
    # at, reported again at no cost, then the epochs after it.
    trials: dict[str, list] = {}
    for event in through_tune.events:
        trials.setdefault(event.trial_id, []).append(event)
    promoted = [events for events in trials.values() if events[0].epoch_device_s == 0]
    assert len(trials) == 30 and len({events[0].config_id for events in trials.values()}) == 28
    assert len(promoted) == 2
    for events in promoted:
        stopped = next(t for t in trials.values() if t[0].config_id == events[0].config_id)
        assert (events[0].epoch, events[0].value) == (stopped[-1].epoch, stopped[-1].value)
        assert [e.epoch for e in events] == list(range(events[0].epoch, events[0].epoch + len(events)))

    two_slots = run_replay(spec, curves, max_concurrent=2, storage_path=str(tmp_path / "two"))
    assert two_slots.errors == 0 and 28 <= two_slots.trials < 40
    assert len({e.config_id for e in two_slots.events}) == 28
