"""The objectives of a search: named once, from the spec's `search.metric` and `search.mode`."""

from __future__ import annotations

import pytest

from tlsearch.spec import validate_spec
from tlsearch.spec.objective import Objective, primary

BASE = {
    "name": "o",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def test_one_objective_from_the_metric_and_its_mode() -> None:
    assert validate_spec(BASE).search.objectives == (Objective("val_accuracy", "max"),)
    loss = validate_spec({**BASE, "search": {"metric": "val_loss"}}).search
    assert loss.objectives == (Objective("val_loss", "min"),) and primary(loss.objectives).mode == "min"


def test_signed_values_are_larger_when_better() -> None:
    assert Objective("val_accuracy", "max").signed(0.9) == 0.9
    assert Objective("val_loss", "min").signed(0.25) == -0.25


def test_a_mode_is_min_or_max() -> None:
    with pytest.raises(ValueError, match="'min' or 'max'"):
        Objective("val_loss", "minimize")
    with pytest.raises(ValueError, match="at least one objective"):
        primary(())
