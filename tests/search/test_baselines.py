"""The baselines' parts that need no cluster: the majority's metrics, the scratch run's budget, the
reuse of the search's own default linear probe, the budget stopper, and the transfer gain."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from tlsearch.results.files import EVENTS_LOG, best_trial, read_jsonl, transfer_gain
from tlsearch.search import baselines
from tlsearch.space import build_space
from tlsearch.spec import validate_spec
from tlsearch.testing import text_spec


def test_majority_metrics_are_those_of_predicting_the_training_shares() -> None:
    train = np.array([0] * 6 + [1] * 3 + [2] * 1)
    validation = np.array([0, 0, 1, 2, 1, 0, 2])
    metrics = baselines.majority_metrics(train, validation, num_classes=4)  # class 3 never seen
    shares = (np.bincount(train, minlength=4) + 1) / (len(train) + 4)
    assert metrics["val_accuracy"] == pytest.approx(accuracy_score(validation, np.zeros_like(validation)))
    assert metrics["val_f1_macro"] == pytest.approx(
        f1_score(validation, np.zeros_like(validation), labels=range(4), average="macro", zero_division=0)
    )
    expected = log_loss(validation, np.tile(shares, (len(validation), 1)), labels=range(4))
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val_roc_auc"] == pytest.approx(0.5)  # constant scores rank nothing
    assert math.isfinite(metrics["train_loss"])


def row(trial_id: str, status: str, epochs: int, device_s: float, **extra: object) -> dict:
    return {"trial_id": trial_id, "status": status, "epochs": epochs, "device_s": device_s, **extra}


def test_the_scratch_budget_is_the_median_completed_trials() -> None:
    trials = [
        row("a", "completed", 3, 30.0),
        row("b", "completed", 3, 10.0),
        row("c", "completed", 3, 20.0, inherited_device_s=5.0),  # spent 15 itself
        row("d", "stopped_early", 1, 1.0),
        row("e", "completed", 3, 99.0, in_search=False, baseline="default_linear_probe"),
    ]
    assert baselines.scratch_budget(trials) == (3, 15.0)
    assert baselines.scratch_budget([row("d", "stopped_early", 2, 4.0)]) == (2, 4.0)
    assert baselines.scratch_budget([row("x", "error", 0, 0.0)]) is None


def test_the_budget_stopper_stops_at_the_epochs_or_before_passing_the_cap() -> None:
    stop = baselines.BudgetStopper({"scratch": (5, 25.0), "default_linear_probe": (2, None)})

    def result(name: str, epoch: int, device_s: float) -> dict:
        return {"epoch": epoch, "device_s": device_s, "config": {"baseline": name}}

    assert not stop("t1", result("scratch", 1, 12.0))  # the first epoch (set-up included) is never cut
    assert not stop("t1", result("scratch", 2, 18.0))  # +6: another epoch ends at 24 ≤ 25
    assert stop("t1", result("scratch", 3, 24.0))  # +6: another would end at 30 > 25
    assert not stop("t2", result("default_linear_probe", 1, 100.0))
    assert stop("t2", result("default_linear_probe", 2, 200.0))
    assert not stop("t3", {"config": {"baseline": "scratch"}})  # not an epoch's result


def test_the_search_s_own_default_linear_probe_is_the_baseline(tiny_bert: Path, tmp_path: Path) -> None:
    files = {"train": tmp_path / "t.parquet", "validation": tmp_path / "v.parquet"}
    spec = validate_spec(
        text_spec(
            tiny_bert,
            files,
            tmp_path,
            search={"baselines": ["default_linear_probe", "scratch"]},
            strategies={"linear_probe": {}, "full": {}},
        )
    )
    space = build_space(spec, num_blocks=2)
    point = baselines.default_linear_probe(spec, space, 2)
    assert point == space.default_point("linear_probe")
    other = {**point, "linear_probe/head_lr": 3e-3}
    trials = [
        row("t0", "error", 0, 1.0, **point),
        row("t1", "completed", 2, 8.0, **other),
        row("t2", "stopped_early", 1, 2.0, **point),
    ]
    to_train = baselines.plan(spec, space, 2, tmp_path, trials)
    (marked,) = [e for e in read_jsonl(tmp_path / EVENTS_LOG) if e["event"] == "baseline"]
    assert marked == marked | {"trial_id": "t2", "baseline": "default_linear_probe"}  # not the failed t0
    (scratch,) = to_train
    assert scratch.name == "scratch" and (scratch.max_epochs, scratch.max_device_s) == (2, 8.0)
    assert scratch.config["baseline"] == "scratch" and scratch.config["full"]["layer_decay"] == 1.0
    assert scratch.config["common"]["warmup_fraction"] >= baselines.SCRATCH_MIN_WARMUP

    # Without linear probes in the search, the default one trains beside scratch.
    spec = validate_spec(
        text_spec(
            tiny_bert,
            files,
            tmp_path,
            search={"baselines": ["default_linear_probe", "scratch"]},
            strategies={"full": {}},
        )
    )
    space = build_space(spec, num_blocks=2)
    planned = baselines.plan(spec, space, 2, tmp_path, [row("f1", "completed", 2, 8.0)])
    assert [(b.name, b.max_epochs, b.max_device_s) for b in planned] == [
        ("default_linear_probe", spec.search.max_epochs, None),
        ("scratch", 2, 8.0),
    ]
    assert planned[0].config["linear_probe"]["head_lr"] == pytest.approx(1e-2)


def test_scratch_is_left_out_when_the_search_trains_from_scratch(tiny_bert: Path, tmp_path: Path) -> None:
    files = {"train": tmp_path / "t.parquet", "validation": tmp_path / "v.parquet"}
    document = text_spec(tiny_bert, files, tmp_path, model={"pretrained": False})
    document["search"].pop("baselines")
    assert baselines.wanted(validate_spec(document)) == ["majority", "default_linear_probe"]


def test_the_transfer_gain_and_the_best_trial_leave_the_baselines_out() -> None:
    trials = [
        row("s1", "completed", 3, 9.0, best_val_accuracy=0.80, in_search=True, baseline=None),
        row(
            "s2", "completed", 3, 9.0, best_val_accuracy=0.70, in_search=True, baseline="default_linear_probe"
        ),
        row("m", "completed", 0, 0.0, best_val_accuracy=0.40, in_search=False, baseline="majority"),
        row("x", "completed", 3, 9.0, best_val_accuracy=0.90, in_search=False, baseline="scratch"),
    ]
    for t in trials:
        t |= {"strategy": "full", "checkpoint": None}
    best = best_trial(trials, "val_accuracy", "max")
    assert best is not None and best["trial_id"] == "s1"  # scratch scored higher, but is no search trial
    assert best["transfer_gain"] == pytest.approx(0.80 - 0.90)
    assert set(best["baselines"]) == {"default_linear_probe", "majority", "scratch"}
    assert transfer_gain(
        0.3, {"majority": {"value": 1.1}, "scratch": {"value": 0.9}}, "min"
    ) == pytest.approx(0.6)
    assert transfer_gain(0.3, {"default_linear_probe": {"value": 0.2}}, "min") is None
