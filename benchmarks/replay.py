"""Replay a recorded learning-curve table through the real Tune + Optuna stack.

A table (benchmarks/learning_curves.py records one with `tlsearch run`) holds every configuration of
a grid with every epoch's metrics and cost. A replayed search uses the searcher and scheduler a real
search builds (`search_algorithms`), over the space of a spec whose knobs take exactly the grid's
values, with a Tune function trainable that reports the sampled configuration's recorded epochs
instead of training: search policies are compared on what they would have spent, in seconds.

The trainable is module level: Ray workers import it by reference, from the driver's working
directory (the repository root, where the tests run) or the PYTHONPATH of benchmarks/_common.py's
`ray_runtime_env`. This module does not import torch, so trial actors stay small.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter

from tlsearch.errors import UserInputError
from tlsearch.space import Continuation, flatten
from tlsearch.spec import vocab
from tlsearch.spec.strategy import STRATEGIES

CONFIG_ID = "config_id"
STRATEGY = "strategy"
METRICS = tuple(vocab.METRICS)
# Per epoch: the epoch's own train + validation time (`epoch_s`, as the loop reports it), what the
# epoch added to the trial's wall and device seconds (the first epoch includes the trial's set-up),
# and the cumulative wall and device seconds the loop reports.
COSTS = ("epoch_s", "epoch_wall_s", "epoch_device_s", "wall_s", "device_s")
# What a replayed epoch reports to Tune: the recorded values a real epoch reports, and its cost.
REPORTED = ("epoch", *METRICS, "wall_s", "device_s", "epoch_device_s", STRATEGY, CONFIG_ID)


def config_key(config: dict[str, Any]) -> str:
    """A canonical key for a trial config: Tune's nested dict or flat `strategy/knob` names; other
    strategies' knobs (empty columns in a table) are ignored."""
    flat = flatten(config)
    strategy = flat[STRATEGY]
    own = {
        k: _plain(v)
        for k, v in flat.items()
        if v is not None and (k.startswith(f"{strategy}/") or k.startswith("common/"))
    }
    # Knobs added since a table was recorded (the training loss, augmentation, LoRA's variant) have
    # defaults, what its trials trained with: at its default, such a knob is left out of the key.
    later = _later_defaults(strategy)
    own = {k: v for k, v in own.items() if k not in later or later[k] != v}
    return json.dumps({STRATEGY: strategy, **dict(sorted(own.items()))})


def _later_defaults(strategy: str) -> dict[str, Any]:
    from tlsearch.spec.strategy import STRATEGIES, CommonKnobs

    defaults = {}
    for prefix, knobs in (("common", CommonKnobs), (strategy, STRATEGIES.get(strategy).knobs)):
        for name, info in knobs.model_fields.items():
            if not info.is_required():
                defaults[f"{prefix}/{name}"] = info.default
    return defaults


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class LearningCurves:
    """The table: one row per (configuration, epoch). Picklable plain data, shipped once to the
    trial actors through the object store."""

    rows: tuple[dict[str, Any], ...]
    source: dict[str, Any] = field(default_factory=dict)  # where it was recorded, for the record
    curves: dict[str, tuple[dict[str, Any], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_config: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            by_config.setdefault(config_key(row), []).append(row)
        curves = {}
        for key, rows in by_config.items():
            rows.sort(key=lambda r: r["epoch"])
            if len({r[CONFIG_ID] for r in rows}) != 1:
                raise UserInputError(f"the table holds one configuration twice: {key}")
            if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
                raise UserInputError(f"{rows[0][CONFIG_ID]}: epochs must run 1, 2, ... without gaps")
            curves[key] = tuple(rows)
        object.__setattr__(self, "curves", curves)
        lengths = {len(c) for c in curves.values()}
        if len(lengths) != 1:
            raise UserInputError(
                f"every configuration needs as many epochs as the others, but got {sorted(lengths)}"
            )
        self._check_full_grid()

    @classmethod
    def read(cls, path: str | Path) -> LearningCurves:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = (table.schema.metadata or {}).get(b"tlsearch")
        return cls(tuple(table.to_pylist()), json.loads(meta) if meta else {})

    def write(self, path: str | Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [CONFIG_ID, STRATEGY, "epoch", *self.knob_names(), *METRICS, *COSTS]
        extra = sorted({k for r in self.rows for k in r} - set(columns))
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns + extra} for r in self.rows])
        table = table.replace_schema_metadata({"tlsearch": json.dumps(self.source)})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return path

    # --- what the grid is ---------------------------------------------------------------------

    @property
    def max_epochs(self) -> int:
        return len(next(iter(self.curves.values())))

    def knob_names(self) -> list[str]:
        names = {k for r in self.rows for k, v in r.items() if "/" in k and v is not None}
        return sorted(names)

    def strategies(self) -> list[str]:
        present = {r[STRATEGY] for r in self.rows}
        return [s for s in STRATEGIES if s in present]

    def values(self, strategy: str) -> dict[str, list[Any]]:
        """Each knob of `strategy` (and each common knob) -> its distinct values in the table."""
        out: dict[str, set[Any]] = {}
        for row in self.rows:
            if row[STRATEGY] != strategy:
                continue
            for name, value in row.items():
                if value is not None and (name.startswith(f"{strategy}/") or name.startswith("common/")):
                    out.setdefault(name, set()).add(_plain(value))
        return {name: sorted(values) for name, values in sorted(out.items())}

    def strategies_section(self) -> dict[str, dict[str, Any]]:
        """The spec's `strategies:` whose knobs take exactly the table's values (one value: fixed)."""
        section: dict[str, dict[str, Any]] = {}
        for strategy in [*self.strategies(), "common"]:
            source = self.strategies()[0] if strategy == "common" else strategy
            for name, values in self.values(source).items():
                prefix, knob = name.split("/", 1)
                if prefix == strategy:
                    section.setdefault(strategy, {})[knob] = values[0] if len(values) == 1 else values
        return section

    def _check_full_grid(self) -> None:
        # Every configuration a sampler can propose from the discretized space must be in the table.
        common = {n: v for n, v in self.values(self.strategies()[0]).items() if n.startswith("common/")}
        for strategy in self.strategies():
            values = self.values(strategy)
            if {n: v for n, v in values.items() if n.startswith("common/")} != common:
                raise UserInputError(f"{strategy}: the common knobs take other values than elsewhere")
            names = list(values)
            for combination in itertools.product(*values.values()):
                key = config_key({STRATEGY: strategy, **dict(zip(names, combination, strict=True))})
                if key not in self.curves:
                    raise UserInputError(f"the table is not a full grid: {key} is missing")

    # --- looking up and scoring ---------------------------------------------------------------

    def curve(self, config: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        key = config_key(config)
        if key not in self.curves:
            raise KeyError(f"configuration not in the learning-curve table: {key}")
        return self.curves[key]

    def configs(self) -> list[dict[str, Any]]:
        """Every configuration, flat (`strategy`, `lora/rank`, ...), in table order."""
        return [
            {k: _plain(v) for k, v in curve[0].items() if k == STRATEGY or ("/" in k and v is not None)}
            for curve in self.curves.values()
        ]

    def best(self, metric: str) -> float:
        """The best configuration's value: the best epoch of the best configuration (the leaderboard's
        best_<metric>)."""
        pick = min if vocab.METRICS[metric] == "min" else max
        return pick(r[metric] for r in self.rows)

    def full_cost(self, epochs: int | None = None) -> list[float]:
        """Cumulative device-seconds of each configuration after `epochs` (default: all) epochs."""
        index = (epochs or self.max_epochs) - 1
        return [curve[index]["device_s"] for curve in self.curves.values()]


def curves_from_run(run_dir: str | Path) -> LearningCurves:
    """The learning-curve table of a finished search whose every trial ran every epoch (a grid
    recorded with `search.seed_configs` = the grid and the FIFO scheduler)."""
    from tlsearch.results.files import EVENTS_LOG, epoch_rows, read_jsonl, read_trials

    run_dir = Path(run_dir)
    trials = read_trials(run_dir)
    if not trials:
        raise UserInputError(f"{run_dir} has no trials.parquet")
    unfinished = [t["trial_id"] for t in trials if t["status"] != "completed"]
    if unfinished:
        raise UserInputError(
            f"{run_dir}: trials {', '.join(unfinished)} did not run every epoch; record with "
            "`search.scheduler.type: fifo` and let the search finish"
        )
    epochs: dict[str, list[dict[str, Any]]] = {}
    for row in epoch_rows(run_dir):
        epochs.setdefault(row["trial_id"], []).append(row)
    starts = [e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e.get("event") == "start"]
    order = {trial_id: i for i, trial_id in enumerate(dict.fromkeys(starts))}
    rows = []
    counters: dict[str, int] = {}
    for trial in sorted(trials, key=lambda t: order.get(t["trial_id"], len(order))):
        strategy = trial[STRATEGY]
        counters[strategy] = counters.get(strategy, 0) + 1
        config = {k: v for k, v in trial.items() if "/" in k and v is not None}
        wall_before = device_before = 0.0
        for epoch in epochs[trial["trial_id"]]:
            rows.append(
                {
                    CONFIG_ID: f"{strategy}-{counters[strategy]:02d}",
                    STRATEGY: strategy,
                    "epoch": int(epoch["epoch"]),
                    **config,
                    **{m: epoch.get(m) for m in METRICS},
                    "epoch_s": epoch["epoch_s"],
                    "epoch_wall_s": epoch["wall_s"] - wall_before,
                    "epoch_device_s": epoch["device_s"] - device_before,
                    "wall_s": epoch["wall_s"],
                    "device_s": epoch["device_s"],
                    "train_samples_per_s": epoch.get("train_samples_per_s"),
                    "trainable_params": trial.get("trainable_params"),
                    "trial_id": trial["trial_id"],
                }
            )
            wall_before, device_before = epoch["wall_s"], epoch["device_s"]
    return LearningCurves(tuple(rows), {"run_dir": str(run_dir)})


# --- the replayed search ---------------------------------------------------------------------


def replayed_rows(
    curves: LearningCurves, config: dict[str, Any], continue_promoted: bool = True
) -> tuple[dict[str, Any], ...]:
    """The epochs a trial of `config` reports. A trial that continues a stopped one (ASHA's
    promotion, `Continuation` in its config) starts from that one's checkpoint, as the training
    loop does: it reports the epoch it continues from again, at no cost, then the epochs after it.
    `continue_promoted=False`: it trains from its start (as before continuations existed). The
    set-up of the continuing trial is not in the table: a reused trial process starts in 0.05 s
    (benchmarks/trial_overhead.py)."""
    params, continuation = Continuation.split(config)
    rows = curves.curve(params)
    if continuation is None or not continue_promoted:
        return rows
    again = rows[continuation.epoch - 1] | {"epoch_device_s": 0.0}
    return (again, *rows[continuation.epoch :])


def replay_trial(config: dict[str, Any], curves: LearningCurves, continue_promoted: bool = True) -> None:
    """The Tune function trainable: report the configuration's recorded epochs, no training, no
    sleeping (the cost is the recorded device-seconds each report carries)."""
    from ray import tune

    for row in replayed_rows(curves, config, continue_promoted):
        tune.report({k: _plain(row[k]) for k in REPORTED})


@dataclass
class ReplayEvent:
    """One reported epoch, in the order the driver received it."""

    trial_id: str
    config_id: str
    strategy: str
    epoch: int
    value: float
    epoch_device_s: float
    time: float


class ReplayLog(Callback):
    """Every replayed epoch as the driver sees it, in arrival order (the search's own clock)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.events: list[ReplayEvent] = []
        self.starts: dict[str, float] = {}
        self.pids: dict[str, int] = {}  # trial -> the trial actor's process (reused across trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.starts[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if CONFIG_ID not in result:
            return
        if "pid" in result:
            self.pids.setdefault(trial.trial_id, int(result["pid"]))
        self.events.append(
            ReplayEvent(
                trial.trial_id,
                result[CONFIG_ID],
                result[STRATEGY],
                int(result["epoch"]),
                float(result[self.metric]),
                float(result["epoch_device_s"]),
                time.perf_counter(),
            )
        )


class TimedLimiter(ConcurrencyLimiter):
    """Tune's concurrency limiter that also times the searcher's `suggest` calls (the sampler's
    own work, apart from Tune's)."""

    def __init__(self, searcher: Any, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.suggest_s: list[float] = []

    def suggest(self, trial_id: str) -> dict | None:
        start = time.perf_counter()
        config = super().suggest(trial_id)
        if config is not None:
            self.suggest_s.append(time.perf_counter() - start)
        return config


@dataclass
class ReplayResult:
    events: list[ReplayEvent]
    suggest_s: list[float]
    wall_s: float
    trials: int
    trial_starts: dict[str, float]  # perf_counter() when each trial started
    trial_pids: dict[str, int]
    started_at: float
    errors: int = 0

    @property
    def actor_pids(self) -> set[int]:
        return set(self.trial_pids.values())


def replay_spec(base: dict[str, Any], curves: LearningCurves, **search: Any) -> Any:
    """`base` (a spec document) searching exactly the table's grid, with `search` settings on top."""
    from tlsearch.spec import validate_spec

    document = {"name": "replay", **{k: v for k, v in base.items() if k not in ("strategies", "search")}}
    document["strategies"] = curves.strategies_section()
    document["search"] = {**base.get("search", {}), "max_epochs": curves.max_epochs, **search}
    return validate_spec(document, source="replay")


def grid_seed_configs(curves: LearningCurves, order: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every configuration of the table as `search.seed_configs` entries (knob names without the
    strategy prefix), in table order or in `order`."""
    configs = curves.configs()
    picked = [configs[i] for i in order] if order is not None else configs
    return [
        {STRATEGY: c[STRATEGY], **{k.split("/", 1)[1]: v for k, v in c.items() if "/" in k}} for c in picked
    ]


def run_replay(
    spec: Any,
    curves: LearningCurves,
    *,
    max_concurrent: int,
    storage_path: str,
    cpus_per_trial: float = 1.0,
    callbacks: Iterable[Any] = (),
    reuse_actors: bool = True,
    continue_promoted: bool = True,
    optuna_storage: Any = None,
) -> ReplayResult:
    """One replayed search on the connected Ray cluster: `spec`'s searcher, sampler, seed configs
    and scheduler (built as a real search builds them), the table instead of training.
    `optuna_storage`: the study's storage (none: in memory; a real search has a journal file)."""
    from ray import tune

    from tlsearch.search.runner import search_algorithms, trial_dirname
    from tlsearch.space import build_space

    space = build_space(spec)
    searcher, scheduler = search_algorithms(spec, space, f"{spec.name}-replay", storage=optuna_storage)
    limiter = TimedLimiter(searcher, max_concurrent=max_concurrent)
    log = ReplayLog(spec.search.metric)
    trainable = tune.with_resources(
        tune.with_parameters(replay_trial, curves=curves, continue_promoted=continue_promoted),
        {"cpu": cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=limiter,
            scheduler=scheduler,
            num_samples=spec.search.num_samples,
            reuse_actors=reuse_actors,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{uuid.uuid4().hex[:8]}",  # one experiment per replay under storage_path
            storage_path=storage_path,
            callbacks=[log, *callbacks],
            verbose=0,
        ),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    return ReplayResult(
        events=log.events,
        suggest_s=limiter.suggest_s,
        wall_s=wall,
        trials=len(grid),
        trial_starts=log.starts,
        trial_pids=log.pids,
        started_at=started,
        errors=sum(r.error is not None for r in grid),
    )


@dataclass
class _SimulatedTrial:
    trial_id: str  # what the scheduler keys its bookkeeping on
    rows: tuple[dict[str, Any], ...]
    epochs_done: int = 0


def simulate_replay(
    spec: Any, curves: LearningCurves, *, max_concurrent: int, continue_promoted: bool = True
) -> ReplayResult:
    """The replayed search without Tune's controller: the same searcher, sampler, seed configs and
    scheduler as `run_replay` (built by `search_algorithms`), called in the order Tune calls them,
    with each running trial on its own device clock.

    Each of the `max_concurrent` slots runs one trial; an epoch's result arrives when its recorded
    device-seconds have passed on that slot, the earliest first, and a freed slot starts the next
    trial at that moment. So a cheap trial's epochs arrive before an expensive one's, as in a real
    search. (`run_replay` reports epochs as fast as Ray delivers them: two concurrent trials
    interleave by Ray's timing, not by what their epochs cost.) With one slot both give the same
    sequence of trials and epochs (tests/benchmarks/test_replay_through_tune.py). Hundreds of
    seeds take seconds rather than a Ray cluster's minutes: for medians that a few seeds only
    sample."""
    import heapq

    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from tlsearch.search.runner import search_algorithms
    from tlsearch.space import build_space

    started = time.perf_counter()
    searcher, scheduler = search_algorithms(spec, build_space(spec), f"{spec.name}-simulated", storage=None)
    limiter = TimedLimiter(searcher, max_concurrent=max_concurrent)
    metric = spec.search.metric
    events: list[ReplayEvent] = []
    starts: dict[str, float] = {}
    pending: list[tuple[float, int, str]] = []  # (device clock at the epoch's end, start order, trial)
    running: dict[str, _SimulatedTrial] = {}
    suggest_more = True

    def start(now: float) -> None:
        """Fill the free slots, as Tune asks the searcher whenever it could start a trial."""
        nonlocal suggest_more
        while suggest_more and len(running) < max_concurrent and len(starts) < spec.search.num_samples:
            trial_id = f"simulated_{len(starts):05d}"
            config = limiter.suggest(trial_id)
            if config == Searcher.FINISHED:  # a listed space tried in full, nothing to promote
                suggest_more = False
            if not isinstance(config, dict):  # or None: nothing now, ask again when a trial ends
                return
            launch(trial_id, config, now)

    def launch(trial_id: str, config: dict, now: float) -> None:
        trial = _SimulatedTrial(trial_id, replayed_rows(curves, config, continue_promoted))
        running[trial_id] = trial
        starts[trial_id] = now
        scheduler.on_trial_add(None, trial)
        heapq.heappush(pending, (now + trial.rows[0]["epoch_device_s"], len(starts), trial_id))

    start(0.0)
    while pending:
        now, order, trial_id = heapq.heappop(pending)
        trial = running[trial_id]
        row = trial.rows[trial.epochs_done]
        trial.epochs_done += 1
        result = {k: _plain(row[k]) for k in REPORTED} | {"training_iteration": trial.epochs_done}
        events.append(
            ReplayEvent(
                trial_id,
                row[CONFIG_ID],
                row[STRATEGY],
                int(row["epoch"]),
                float(row[metric]),
                float(row["epoch_device_s"]),
                now,
            )
        )
        # Tune's order (TuneController._process_trial_result, stop_trial): the scheduler decides
        # first; the searcher hears the result only if the trial goes on, and its end either way.
        decision = scheduler.on_trial_result(None, trial, result)
        if decision != TrialScheduler.STOP:
            limiter.on_trial_result(trial_id, result)
        if decision == TrialScheduler.STOP or trial.epochs_done == len(trial.rows):
            scheduler.on_trial_complete(None, trial, result)
            limiter.on_trial_complete(trial_id, result=result)
            del running[trial_id]
            start(now)
        else:
            next_row = trial.rows[trial.epochs_done]
            heapq.heappush(pending, (now + next_row["epoch_device_s"], order, trial_id))
    return ReplayResult(
        events=events,
        suggest_s=limiter.suggest_s,
        wall_s=time.perf_counter() - started,
        trials=len(starts),
        trial_starts=starts,
        trial_pids={},
        started_at=0.0,
    )


# --- scoring a replayed search -----------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """A replayed search seen as cost → best value so far."""

    costs: tuple[float, ...]  # cumulative device-seconds after each reported epoch
    best: tuple[float, ...]  # best value reported so far, at the same points
    cost_by_strategy: dict[str, float]
    trials_by_strategy: dict[str, int]
    epochs: int

    @classmethod
    def of(cls, events: Sequence[ReplayEvent], mode: str) -> Trace:
        pick = min if mode == "min" else max
        costs, best, by_strategy, trials = [], [], {}, {}
        total, current = 0.0, None
        seen: set[str] = set()
        for e in events:
            total += e.epoch_device_s
            current = e.value if current is None else pick(current, e.value)
            costs.append(total)
            best.append(current)
            by_strategy[e.strategy] = by_strategy.get(e.strategy, 0.0) + e.epoch_device_s
            if e.trial_id not in seen:
                seen.add(e.trial_id)
                trials[e.strategy] = trials.get(e.strategy, 0) + 1
        return cls(tuple(costs), tuple(best), by_strategy, trials, len(events))

    @property
    def total_cost(self) -> float:
        return self.costs[-1] if self.costs else 0.0

    def regret(self, target: float, mode: str) -> list[float]:
        """Points of regret (metric × 100) after each reported epoch."""
        sign = -1.0 if mode == "min" else 1.0
        return [100.0 * sign * (target - b) for b in self.best]

    def cost_to_reach(self, target: float, mode: str, tolerance_points: float) -> float:
        """Device-seconds until the best value so far is within `tolerance_points` of `target`;
        infinity when the search never got there."""
        for cost, regret in zip(self.costs, self.regret(target, mode), strict=True):
            if regret <= tolerance_points + 1e-9:
                return cost
        return math.inf

    def regret_at(self, grid: Sequence[float], target: float, mode: str) -> list[float]:
        """Regret after spending each cost of `grid`: infinite before the first reported epoch (a
        search that has found nothing yet is worse than any that has)."""
        regrets = self.regret(target, mode)
        out, i = [], -1
        for c in grid:
            while i + 1 < len(self.costs) and self.costs[i + 1] <= c:
                i += 1
            out.append(regrets[i] if i >= 0 else math.inf)
        return out
