"""Baselines: what a search's best trial is measured against (`search.baselines`), run after the
search, outside its Optuna study and its `num_samples`.

- `majority`: the most frequent training class for every validation row, with the training class
  shares (add-one smoothed) as its probabilities; computed here, in the driver, in milliseconds.
- `scratch`: the same architecture from random weights (`pretrained: false`), the `full` strategy at
  from-scratch learning rates (`SCRATCH_KNOBS`: the fine-tuning defaults would hardly move random
  weights), for the median completed search trial's epochs and, at most, its device-seconds.
- `default_linear_probe`: a linear probe with every knob at its preferred value. When the search ran
  that very configuration (its seed configuration), that trial is the baseline (an event marks it; it
  stays a search trial and may be the best); otherwise it runs beside `scratch`.

Baseline trials other than the reused one are recorded like search trials (the same logs, tables and
W&B runs, W&B job type `baseline`) with their name in the `baseline` column and `in_search` false.
A resumed search runs only the baselines that have not ended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from tlsearch.results.files import (
    BASELINE_EVENT,
    EPOCHS_LOG,
    EVENTS_LOG,
    append_jsonl,
    spent_device_s,
)
from tlsearch.space import SearchSpace, build_space
from tlsearch.space.trial_config import BASELINE_KEY, TrialConfig
from tlsearch.spec import Spec
from tlsearch.spec.model import StrategiesSpec

MAJORITY, SCRATCH, DEFAULT_LINEAR_PROBE = "majority", "scratch", "default_linear_probe"
MAJORITY_TRIAL = "baseline_majority"
# Learning rates of the from-scratch run: AdamW's usual ones for training a small network from
# random weights, every layer alike.
SCRATCH_KNOBS = {"head_lr": 1e-3, "backbone_lr": 1e-3, "layer_decay": 1.0}
SCRATCH_MIN_WARMUP = 0.1


@dataclass(frozen=True)
class BaselineTrial:
    """A baseline that trains: its Tune config (with BASELINE_KEY) and how long it may run."""

    name: str
    config: dict[str, Any]  # nested, as Tune hands it to the trainable
    max_epochs: int
    max_device_s: float | None  # None: no cap beyond the epochs


def wanted(spec: Spec) -> list[str]:
    """The baselines this search runs: `scratch` is left out when the model is not pretrained (the
    search itself trains from scratch)."""
    return [b for b in spec.search.baselines if b != SCRATCH or spec.model.pretrained]


def ended(trials: list[dict[str, Any]]) -> set[str]:
    return {t["baseline"] for t in trials if t.get("baseline") and t["status"] != "running"}


def unfinished_runs(trials: list[dict[str, Any]]) -> list[str]:
    """Baseline trials a killed driver left running: a resumed search runs them again."""
    return [t["trial_id"] for t in trials if not t.get("in_search", True) and t["status"] == "running"]


# --- majority ----------------------------------------------------------------------------------


def majority_metrics(train_targets: Any, validation_targets: Any, num_classes: int) -> dict[str, float]:
    """The loop's metrics (tlsearch.train.metrics) of predicting the training class shares."""
    import numpy as np
    import torch

    from tlsearch.train.metrics import classification_metrics

    counts = np.bincount(np.asarray(train_targets), minlength=num_classes).astype(np.float64)
    shares = (counts + 1.0) / (counts.sum() + num_classes)  # add-one: an unseen class costs a finite loss
    logits = torch.log(torch.as_tensor(shares, dtype=torch.float32))

    def repeated(n: int) -> torch.Tensor:
        return logits.expand(n, num_classes).clone()

    val = torch.as_tensor(np.asarray(validation_targets), dtype=torch.long)
    train = torch.as_tensor(np.asarray(train_targets), dtype=torch.long)
    metrics = classification_metrics(repeated(len(val)), val, num_classes)
    metrics["train_loss"] = classification_metrics(repeated(len(train)), train, num_classes)["val_loss"]
    return metrics


def record_majority(run_dir: Path, spec: Spec, data: Any) -> None:
    """Compute the majority baseline on the rows the trials see and record it as a trial."""
    from tlsearch.data.datasets import load_split

    started = time.time()
    train, validation = load_split(data, "train"), load_split(data, "validation")
    metrics = majority_metrics(train.targets, validation.targets, len(data.labels))
    seconds = time.time() - started
    config = {"strategy": None, BASELINE_KEY: MAJORITY}
    append_jsonl(
        run_dir / EVENTS_LOG,
        {"time": started, "event": "start", "trial_id": MAJORITY_TRIAL, "config": config},
    )
    append_jsonl(
        run_dir / EPOCHS_LOG,
        {
            "trial_id": MAJORITY_TRIAL,
            "time": time.time(),
            "epoch": 0,
            **metrics,
            "wall_s": seconds,
            "device_s": 0.0,
            "trainable_params": 0,
        },
    )
    append_jsonl(
        run_dir / EVENTS_LOG,
        {"time": time.time(), "event": "end", "trial_id": MAJORITY_TRIAL, "status": "ok"},
    )


# --- trained baselines ---------------------------------------------------------------------------


def default_linear_probe(spec: Spec, space: SearchSpace, num_blocks: int) -> dict[str, Any]:
    """The linear probe's preferred configuration, flat: from the search's own space when it searches
    linear probes (as its seed configuration is), else from the default linear-probe space with the
    search's common ranges."""
    if "linear_probe" not in space.strategy_names():
        strategies = StrategiesSpec.model_validate(
            {"linear_probe": {}, "common": spec.strategies.model_dump()["common"]}
        )
        space = build_space(spec.model_copy(update={"strategies": strategies}), num_blocks=num_blocks)
    return space.default_point("linear_probe")


def scratch_config(spec: Spec, num_blocks: int) -> dict[str, Any]:
    """`full` at from-scratch learning rates, the rest at its preferred values, flat."""
    strategies = StrategiesSpec.model_validate({"full": {}, "common": spec.strategies.model_dump()["common"]})
    space = build_space(spec.model_copy(update={"strategies": strategies}), num_blocks=num_blocks)
    point = space.default_point("full", SCRATCH_KNOBS)
    warmup = "common/warmup_fraction"
    point[warmup] = max(float(point[warmup]), SCRATCH_MIN_WARMUP)
    return point


def reusable_search_trial(trials: list[dict[str, Any]], point: dict[str, Any]) -> str | None:
    """The first search trial (by id) that trained exactly `point` and did not fail."""
    for t in sorted(trials, key=lambda t: t["trial_id"]):
        if (
            t.get("in_search", True)
            and t["status"] != "error"
            and all(_same(t.get(k), v) for k, v in point.items())
        ):
            return str(t["trial_id"])
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return bool(a == b)


def scratch_budget(trials: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(epochs, device-seconds) of the median completed search trial (by device-seconds); the
    median stopped one when none completed; None when no search trial ended."""
    for statuses in (("completed",), ("stopped_early",)):
        done = [t for t in trials if t.get("in_search", True) and t["status"] in statuses and t["epochs"]]
        if done:
            ordered = sorted(done, key=spent_device_s)
            median = ordered[(len(ordered) - 1) // 2]
            return int(median["epochs"]), spent_device_s(median)
    return None


def nested(point: dict[str, Any]) -> dict[str, Any]:
    """{"full/head_lr": x} -> {"full": {"head_lr": x}}: Tune's config shape."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        if "/" in key:
            prefix, knob = key.split("/", 1)
            out.setdefault(prefix, {})[knob] = value
        else:
            out[key] = value
    return out


def plan(
    spec: Spec, space: SearchSpace, num_blocks: int, run_dir: Path, trials: list[dict[str, Any]]
) -> list[BaselineTrial]:
    """What is left to do: marks a reusable default linear probe, and returns the baselines to train.
    (The majority baseline is recorded by the caller: it trains nothing.)"""
    done = ended(trials)
    out = []
    if DEFAULT_LINEAR_PROBE in wanted(spec) and DEFAULT_LINEAR_PROBE not in done:
        point = default_linear_probe(spec, space, num_blocks)
        reused = reusable_search_trial(trials, point)
        if reused is not None:
            append_jsonl(
                run_dir / EVENTS_LOG,
                {
                    "time": time.time(),
                    "event": BASELINE_EVENT,
                    "trial_id": reused,
                    "baseline": DEFAULT_LINEAR_PROBE,
                },
            )
            print(f"[tlsearch] baseline default_linear_probe: the search's own trial {reused}", flush=True)
        else:
            TrialConfig.parse(point)  # a bad point fails here, not in a trial
            out.append(
                BaselineTrial(
                    DEFAULT_LINEAR_PROBE,
                    nested(point) | {BASELINE_KEY: DEFAULT_LINEAR_PROBE},
                    spec.search.max_epochs,
                    None,
                )
            )
    if SCRATCH in wanted(spec) and SCRATCH not in done:
        budget = scratch_budget(trials)
        if budget is None:
            print(
                "[tlsearch] baseline scratch: no search trial ended, nothing to size it by; skipped",
                flush=True,
            )
        else:
            epochs, device_s = budget
            point = scratch_config(spec, num_blocks)
            TrialConfig.parse(point)
            out.append(BaselineTrial(SCRATCH, nested(point) | {BASELINE_KEY: SCRATCH}, epochs, device_s))
    return out


class BudgetStopper:
    """Tune's `stop` for baseline trials: a trial stops at its epochs, or once another epoch like its
    last one would take it past its device-seconds (the first epoch, set-up included, is never cut)."""

    def __init__(self, budgets: dict[str, tuple[int, float | None]]):
        self.budgets = budgets  # baseline name -> (epochs, device-seconds or None)
        self._last: dict[str, float] = {}

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        if "epoch" not in result:
            return False
        epochs, device_cap = self.budgets[result["config"][BASELINE_KEY]]
        device_s = float(result.get("device_s") or 0.0)
        previous = self._last.get(trial_id)
        self._last[trial_id] = device_s
        if result["epoch"] >= epochs:
            return True
        if device_cap is None:
            return False
        step = device_s - previous if previous is not None else 0.0
        return device_s + step > device_cap


class FixedConfigs(Searcher):
    """Hands Tune the baselines' configurations, one trial each, then ends."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.configs = list(configs)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray omits FINISHED
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass
