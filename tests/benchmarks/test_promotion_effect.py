"""What ASHA's promotion is credited with in the search-efficiency figures: the seeds whose search
never reaches the target without it, and what each promotion variant costs against none."""

from __future__ import annotations

import math

from benchmarks.search_efficiency import promotion_effect


def _policy(median_cost: float) -> dict[str, object]:
    return {"cost_s": {"median": median_cost, "q25": median_cost, "q75": median_cost}}


def test_rescued_seeds_and_cost_against_no_promotion() -> None:
    reaches = {
        "tpe_asha_no_promotion": [100.0, math.inf, 80.0, math.inf],
        "tpe_asha": [90.0, 400.0, 80.0, 300.0],
        "tpe_asha_promotion_restart": [90.0, 450.0, 80.0, math.inf],
    }
    policies = {
        "tpe_asha_no_promotion": _policy(1000.0),
        "tpe_asha": _policy(1100.0),
        "tpe_asha_promotion_restart": _policy(1250.0),
    }
    effect = promotion_effect(reaches, policies)
    assert effect is not None
    assert effect["searches_short_without_promotion"] == "2/4"
    # Only the seeds short without promotion count, sorted; one that never gets there sorts last and
    # is written as null (JSON has no infinity).
    assert effect["tpe_asha"] == {"rescued_time_to_target_s": [300.0, 400.0], "cost_vs_no_promotion": 1.1}
    assert effect["tpe_asha_promotion_restart"]["rescued_time_to_target_s"] == [450.0, None]
    assert effect["tpe_asha_promotion_restart"]["cost_vs_no_promotion"] == 1.25


def test_nothing_to_say_without_the_no_promotion_policy() -> None:
    assert promotion_effect({"tpe_asha": [1.0]}, {"tpe_asha": _policy(1.0)}) is None
