"""What a learning-curve table says about the search-efficiency target before any policy runs: the
cheapest way to reach it and what the spec's seed configurations cost."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.learning_curves import DEMO_SPEC, GRID, synthetic_curves
from benchmarks.search_efficiency import table_facts
from tlsearch.spec.strategy import STRATEGIES


def test_oracle_and_seed_configurations_of_the_demo_grid() -> None:
    base = yaml.safe_load(DEMO_SPEC.read_text())
    curves = synthetic_curves(GRID, max_epochs=4, seed=1)
    metric = "val_f1_macro"
    best = curves.best(metric)
    facts = table_facts(curves, base, metric, "max", best, 0.5)

    # The demo's default seed configurations: one per strategy, each knob at its preferred default.
    seeds = facts["seed_configs"]
    assert [s["config_id"].split("-")[0] for s in seeds] == ["linear_probe", "partial", "full", "lora"]
    by_id = {curve[0]["config_id"]: curve for curve in curves.curves.values()}
    for seed in seeds:
        curve = by_id[seed["config_id"]]
        strategy = curve[0]["strategy"]
        for name, value in curve[0].items():
            if name.startswith(f"{strategy}/") and isinstance(GRID[strategy][name.split("/")[1]], list):
                assert value == STRATEGIES.get(strategy).knobs.knob(name.split("/")[1]).preferred
        assert seed["cost_s"] == round(curve[-1]["device_s"], 1)
    assert facts["seed_configs_cost_s"] == round(sum(s["cost_s"] for s in seeds), 1)

    # The oracle trains the cheapest configuration that gets within 0.5 points, up to that epoch.
    reaching = [
        next(r["device_s"] for r in curve if 100 * (best - r[metric]) <= 0.5)
        for curve in curves.curves.values()
        if any(100 * (best - r[metric]) <= 0.5 for r in curve)
    ]
    assert facts["oracle_cost_s"] == round(min(reaching), 1)
    assert by_id[facts["oracle_config_id"]]


def test_random_order_with_perfect_stopping_is_the_mean_over_every_order() -> None:
    """The closed form against every order of four configurations: two never reach the target
    (stopped after their first epoch), two reach it at different epochs."""
    import itertools
    from types import SimpleNamespace

    from benchmarks.search_efficiency import random_order_perfect_stopping

    def curve(values: list[float], epoch_cost: float) -> list[dict[str, float]]:
        return [{"v": v, "device_s": epoch_cost * (i + 1)} for i, v in enumerate(values)]

    curves = SimpleNamespace(
        curves={
            "a": curve([0.5, 0.6, 0.7], 10.0),  # never: 10 s to see its first epoch
            "b": curve([0.2, 0.3, 0.4], 4.0),  # never: 4 s
            "c": curve([0.8, 0.95, 0.99], 6.0),  # reaches it at epoch 2: 12 s
            "d": curve([0.97, 0.98, 0.99], 20.0),  # at epoch 1: 20 s
        }
    )

    def reached(row: dict[str, float]) -> bool:
        return row["v"] >= 0.95

    def cost(order: tuple[str, ...]) -> float:
        spent = 0.0
        for name in order:
            rows = curves.curves[name]
            hit = next((r for r in rows if reached(r)), None)
            if hit is not None:
                return spent + hit["device_s"]
            spent += rows[0]["device_s"]
        raise AssertionError("no configuration reaches the target")

    orders = list(itertools.permutations(curves.curves))
    expected = sum(cost(order) for order in orders) / len(orders)
    assert abs(random_order_perfect_stopping(curves, reached) - expected) < 1e-9
    assert abs(expected - ((10 + 4) / 3 + (12 + 20) / 2)) < 1e-9


def test_random_search_simulated_matches_explicit_draws_and_the_closed_form() -> None:
    """The vectorised simulation against trial-by-trial random search on a small full grid whose
    strategies have different numbers of configurations (so draws are not uniform over them)."""
    from benchmarks.replay import LearningCurves
    from benchmarks.search_efficiency import draw_probabilities, random_search_simulated

    rows = []
    grid = {"linear_probe": ("linear_probe/head_lr", [0.01, 0.03, 0.1]), "full": ("full/head_lr", [0.001])}
    scores = {
        ("linear_probe", 0.01): [0.5, 0.6],
        ("linear_probe", 0.03): [0.55, 0.65],
        ("linear_probe", 0.1): [0.7, 0.9],
        ("full", 0.001): [0.85, 0.95],
    }
    epoch_cost = {"linear_probe": 1.0, "full": 10.0}
    for strategy, (name, values) in grid.items():
        for value in values:
            for epoch, score in enumerate(scores[(strategy, value)], start=1):
                rows.append(
                    {
                        "config_id": f"{strategy}-{value}",
                        "strategy": strategy,
                        "epoch": epoch,
                        name: value,
                        "val_f1_macro": score,
                        "device_s": epoch_cost[strategy] * epoch,
                    }
                )
    curves = LearningCurves(tuple(rows))
    chances = draw_probabilities(curves)
    assert sorted(round(c, 9) for c in chances.values()) == [round(1 / 6, 9)] * 3 + [0.5]

    def reached(row: dict[str, Any]) -> bool:
        return row["val_f1_macro"] >= 0.9

    # One trial reaches it with chance 1/6 (linear_probe at 0.1, after 2 s) + 1/2 (full, after 20 s);
    # misses cost 2 s each: E = (3 * 1/6 * 2 + 1/2 * 20) / (2/3) = 16.5 s. (Chances that are not
    # powers of 1/2 keep the quartiles off the jumps of this discrete distribution.)
    facts = random_search_simulated(curves, reached, num_samples=3, searches=200_000, seed=1)
    assert facts["hit_chance_per_trial"] == round(2 / 3, 5)
    assert abs(facts["mean_without_cap_s"] - 16.5) < 0.05
    assert abs(facts["reached_fraction"] - (1 - (1 / 3) ** 3)) < 0.005

    explicit = searches_by_explicit_draws(curves, chances, reached, num_samples=3, searches=50_000)
    simulated = facts["time_to_target_s"]
    for q in ("q25", "median", "q75"):
        assert abs(simulated[q] - explicit[q]) <= 0.5, (q, simulated, explicit)


def searches_by_explicit_draws(
    curves: Any,
    chances: dict[str, float],
    reached: Callable[[dict[str, Any]], bool],
    num_samples: int,
    searches: int,
) -> dict[str, float]:
    import random
    import statistics

    rng = random.Random(7)
    keys = list(chances)
    costs = []
    for _ in range(searches):
        spent, found = 0.0, False
        for key in rng.choices(keys, weights=[chances[k] for k in keys], k=num_samples):
            hit = next((r for r in curves.curves[key] if reached(r)), None)
            if hit is not None:
                spent += hit["device_s"]
                found = True
                break
            spent += curves.curves[key][-1]["device_s"]
        costs.append(spent if found else float("inf"))
    q25, median, q75 = statistics.quantiles(costs, n=4, method="inclusive")
    return {"q25": q25, "median": median, "q75": q75}


def test_trial_reaching_counts_trials_in_the_order_they_first_reported() -> None:
    from types import SimpleNamespace

    from benchmarks.search_efficiency import trial_reaching

    def event(trial: str, value: float) -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial, value=value)

    # Trials a and b report side by side; c starts after a ended; b's third epoch gets there.
    events = [event("a", 0.5), event("b", 0.6), event("a", 0.7), event("c", 0.8), event("b", 0.9)]
    assert trial_reaching(events, 0.9, "max", 0.5) == 2
    assert trial_reaching(events, 0.8, "max", 0.5) == 3
    assert trial_reaching(events, 0.95, "max", 0.5) is None
    # A loss: lower is better.
    assert trial_reaching([event("a", 0.3), event("b", 0.1)], 0.1, "min", 0.5) == 2


def test_search_efficiency_refuses_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    """Before Ray starts: what is wrong and how to fix it, and nothing written."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "search_efficiency.py"
    cases = [
        (["--quick", "--num-samples", "0"], "--num-samples must be at least 1, but got 0"),
        (["--quick", "--seeds", "-1"], "--seeds must be at least 1, but got -1"),
        (["--table", str(tmp_path / "none.parquet")], "none.parquet is missing: record it with"),
    ]
    for args, message in cases:
        result = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-500:])


def test_the_ratio_interval_brackets_the_ratio_and_narrows_with_seeds() -> None:
    import numpy as np

    from benchmarks.search_efficiency import bootstrap_ratio

    rng = np.random.default_rng(7)
    few = bootstrap_ratio(list(rng.exponential(100, 10)), list(rng.exponential(400, 10)))
    many = bootstrap_ratio(list(rng.exponential(100, 400)), list(rng.exponential(400, 400)))
    assert few["q05"] < few["q95"] and many["q05"] < 0.25 < many["q95"]  # the true ratio of medians
    assert many["q95"] - many["q05"] < few["q95"] - few["q05"]
    # Searches that never got there are infinitely expensive; a ratio that is mostly undefined has
    # no interval.
    assert bootstrap_ratio([float("inf")] * 9 + [1.0], [1.0] * 10) == {"q05": None, "q95": None}
    partly = bootstrap_ratio([float("inf")] * 3 + [1.0] * 17, [2.0] * 20)
    assert partly == {"q05": 0.5, "q95": 0.5}
