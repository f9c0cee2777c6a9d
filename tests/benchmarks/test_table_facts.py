"""What a learning-curve table says about the search-efficiency target before any policy runs: the
cheapest way to reach it and what the spec's seed configurations cost."""

from __future__ import annotations

import yaml

from benchmarks.learning_curves import DEMO_SPEC, GRID, synthetic_curves
from benchmarks.search_efficiency import table_facts
from tlsearch.spec.model import preferred_default


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
                assert value == preferred_default(strategy, name.split("/")[1])
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
