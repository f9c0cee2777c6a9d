"""Per-trial overhead and device-busy fraction of real searches, with and without reused trial
processes, on one warm local Ray cluster (issue 5, target 1).

    .venv/bin/python benchmarks/trial_overhead.py [--quick]

Two searches per mode (`training.reuse_processes` false, then true), all on the demo's real model and
data (`search_spaces/bbc_news_minilm.yaml`):

- overhead: short trials one at a time; per trial, seconds from Tune starting it (the driver's
  `on_trial_start`) to the beginning of its first training step, its first batch in hand
  (`startup_s` in trials.parquet), with its parts:
  Ray Train's start of the workers (multi-worker trials), model loading, data preparation, the rest
  (process start, imports, Ray). The first trial of a search pays for its process either way: the
  figure is the median over the others (a warm cluster).
- busy: trials of about a minute, as many at once as the machine has cores (one core each); the
  fraction of the search's wall time (first trial start to last trial end, times the slots) that the
  trials spent in their training and evaluation epochs. Also each trial process's resident memory at
  the start of each trial it ran and at its peak (`host_memory`): a reused process must not grow
  from one trial to the next. With reused processes twice: each epoch's checkpoint and report on a
  thread of their own (`training.background_checkpoints`, the default), then in line.

`--quick` uses a tiny BERT built from code instead (development; seconds of training per trial).
- multi-worker: the overhead search again with 2-worker DDP trials (Ray Train starts a controller
  and a worker group per trial; no process reuse).

Writes benchmarks/results/trial_overhead.json; `trial_overhead_s` and `device_busy_fraction` are the
figures with reused processes. About 15 minutes on a 2-core machine (2 with --quick).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result

DEMO = ROOT / "search_spaces" / "bbc_news_minilm.yaml"
# One fixed configuration per search: every trial does the same work, so modes compare like for like.
FULL = '[{"strategy": "full", "head_lr": 0.003, "backbone_lr": 0.0001, "layer_decay": 0.8}]'


Rows = list[dict[str, Any]]


def _search(spec: Path, overrides: list[str], storage: str, name: str) -> tuple[Rows, Rows, float]:
    from tlsearch.results.files import EVENTS_LOG, read_jsonl
    from tlsearch.search.runner import run_search
    from tlsearch.spec import load_spec

    outcome = run_search(load_spec(str(spec), [*overrides, f"storage={storage}", f"name={name}"]))
    events = read_jsonl(outcome.run_dir / EVENTS_LOG)
    starts = [e["time"] for e in events if e["event"] == "start"]
    ends = [e["time"] for e in events if e["event"] == "end"]
    return outcome.trials, events, max(ends) - min(starts)


def _epoch_rows(run_dir: Path) -> Rows:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "epochs.parquet").to_pylist()


def _per_trial_sum(epochs: Rows, column: str) -> dict[str, float]:
    """Per trial, the sum of an epochs.parquet column over its epochs."""
    sums: dict[str, float] = {}
    for row in epochs:
        sums[row["trial_id"]] = sums.get(row["trial_id"], 0.0) + row[column]
    return sums


def _memory_per_process(epochs: Rows) -> dict[str, Any]:
    """Resident memory of each trial process across the trials it ran in turn: at each trial's start
    (what the trials before it left behind) and its highest epoch-end figure. A reused process that
    grows from trial to trial shows here; its first trial starts before any model or data is kept."""
    trials: dict[str, dict[str, Any]] = {}
    for row in epochs:
        trial = trials.setdefault(
            row["trial_id"],
            {
                "pid": row["rank0_pid"],
                "first_step_at": row["first_step_at"],
                "start_gib": row["host_rss_at_start_gib"],
                "peak_gib": 0.0,
            },
        )
        trial["peak_gib"] = max(trial["peak_gib"], row["host_rss_gib"])
    processes: dict[int, list[dict[str, float]]] = {}
    for trial in sorted(trials.values(), key=lambda t: t["first_step_at"]):
        processes.setdefault(trial["pid"], []).append(
            {"start_gib": trial["start_gib"], "peak_gib": round(trial["peak_gib"], 3)}
        )
    runs = list(processes.values())
    # From each process's second trial (the first one with the model and data kept) to its last.
    growth = [run[-1]["start_gib"] - run[1]["start_gib"] for run in runs if len(run) > 2]
    return {
        "trials_per_process": runs,
        "start_gib_growth_max": round(max(growth), 3) if growth else None,
        "peak_gib_max": max(t["peak_gib"] for run in runs for t in run),
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _handoffs(trials: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[float]:
    """Trials one at a time: seconds from one trial's end (the driver's clock) to the next trial's
    first training step. Unlike `startup_s` (which starts at Tune's `on_trial_start`, called once
    the trial's actor is up), this covers everything between two trials: Tune, the searcher, actor
    start or reset, imports, model and data."""
    ends = {e["trial_id"]: e["time"] for e in events if e["event"] == "end"}
    order = sorted((t for t in trials if t["first_step_at"]), key=lambda t: t["first_step_at"])
    return [
        round(t["first_step_at"] - ends[prev["trial_id"]], 2)
        for prev, t in itertools.pairwise(order)
        if prev["trial_id"] in ends
    ]


def _overhead_figures(trials: Rows, events: Rows) -> dict[str, Any]:
    """Start-up and hand-off of an overhead search's trials; the first trial starts its process in
    every mode, so the medians are over the others (a warm cluster)."""
    trials = sorted(trials, key=lambda t: t["first_step_at"] or 0)
    warm = trials[1:]

    def median_of(key: str) -> float | None:
        return _median([t[key] for t in warm if t[key] is not None])

    return {
        "overhead_trials": len(trials),
        "startup_s_median": median_of("startup_s"),
        "startup_s_first": trials[0]["startup_s"],
        "startup_s_all": [round(t["startup_s"], 2) for t in trials if t["startup_s"] is not None],
        "handoff_s_median": _median(_handoffs(trials, events)),
        "handoff_s_all": _handoffs(trials, events),
        "workers_start_s_median": median_of("workers_start_s"),
        "model_load_s_median": median_of("model_load_s"),
        "data_load_s_median": median_of("data_load_s"),
    }


def _busy_startups(trials: Rows) -> list[dict[str, Any]]:
    """Each busy-search trial's start-up and its parts, in the order the trials began: the first one
    of each process pays the cold start (process, imports, device context, model, data)."""
    keys = ("startup_s", "workers_start_s", "model_load_s", "data_load_s")
    order = sorted((t for t in trials if t["first_step_at"]), key=lambda t: t["first_step_at"])
    return [{k: round(t[k], 2) if t[k] is not None else None for k in keys} for t in order]


def measure_busy(
    spec: Path,
    base: list[str],
    *,
    busy_trials: int,
    busy: list[str],
    slots: int,
    storage: str,
    reuse: bool,
    background: bool = True,
) -> dict[str, Any]:
    """The busy search in one mode: trials of about a minute, `slots` at a time; `background`:
    `training.background_checkpoints` (the default), else each epoch's report in line."""
    mode = "reused_processes" if reuse else "new_process_per_trial"
    mode += "" if background else "_inline_reports"
    overrides = [
        *base,
        f"search.num_samples={busy_trials}",
        f"search.max_concurrent={slots}",
        f"search.seed_configs={FULL}",
        "strategies={full: {}}",
        *busy,
        f"training.reuse_processes={str(reuse).lower()}",
        f"training.background_checkpoints={str(background).lower()}",
    ]
    started = time.time()
    done, _, wall = _search(spec, overrides, storage, f"busy-{mode}")
    epochs = _epoch_rows(Path(storage) / f"busy-{mode}")
    epoch_s = _per_trial_sum(epochs, "epoch_s")
    saves_s = _per_trial_sum(epochs, "checkpoint_save_s")
    writes_s = _per_trial_sum(epochs, "checkpoint_write_s")
    startups = _busy_startups(done)
    idle_s = wall * slots - sum(epoch_s.values())
    startups_s = sum(t["startup_s"] or 0.0 for t in startups)
    return {
        "host_memory": _memory_per_process(epochs),
        "busy_trials": len(done),
        "busy_trial_wall_s_median": _median([t["wall_s"] for t in done if t["wall_s"]]),
        "busy_epoch_s_median": _median(list(epoch_s.values())),
        "background_checkpoints": background,
        # Between epochs, the trial's sum: what the training thread spent on each epoch's checkpoint
        # (in line: writing it; in the background: copying it off the device, waiting for the
        # previous report), and writing the files (on the training thread or not).
        "busy_checkpoint_save_s_median": _median(list(saves_s.values())),
        "busy_checkpoint_write_s_median": _median(list(writes_s.values())),
        "busy_startups": startups,
        # Where the device's idle seconds went (summed over slots): the trials' start-ups (the first
        # of each process is cold), the training thread's part of checkpoints, and the rest (Tune
        # starting the search, hand-offs; in line also Ray copying each checkpoint into the run's
        # storage inside `report` and the driver's answer).
        "busy_idle_s": {
            "total": round(idle_s, 2),
            "startups": round(startups_s, 2),
            "checkpoint_saves": round(sum(saves_s.values()), 2),
            "other": round(idle_s - startups_s - sum(saves_s.values()), 2),
        },
        "busy_search_wall_s": round(wall, 1),
        "busy_search_total_s": round(time.time() - started, 1),
        "device_busy_fraction": round(sum(epoch_s.values()) / (wall * slots), 3),
    }


def measure(
    spec: Path,
    base: list[str],
    *,
    overhead_trials: int,
    busy_trials: int,
    busy: list[str],
    slots: int,
    storage: str,
    busy_modes: tuple[bool, ...] = (False, True),
    inline_reports: bool = False,
    on_busy: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Both searches in each mode (`training.reuse_processes` false, then true) on the connected
    cluster; `busy_modes` picks the modes of the (longer) busy search, whose figures also go to
    `on_busy`. `inline_reports`: the busy search with reused processes once more, each epoch
    reported in line (no background checkpoints)."""
    overhead = [
        *base,
        f"search.num_samples={overhead_trials}",
        "search.max_concurrent=1",
        "search.max_epochs=1",
        "data.max_train_samples=32",
        "data.max_validation_samples=32",
        "strategies={full: {}, linear_probe: {}}",
    ]
    figures: dict[str, Any] = {"slots": slots, "modes": {}}
    for reuse in (False, True):
        mode = "reused_processes" if reuse else "new_process_per_trial"
        flag = f"training.reuse_processes={str(reuse).lower()}"
        trials, events, _ = _search(spec, [*overhead, flag], storage, f"overhead-{mode}")
        figures["modes"][mode] = part = _overhead_figures(trials, events)
        if reuse in busy_modes:
            busy_figures = measure_busy(
                spec, base, busy_trials=busy_trials, busy=busy, slots=slots, storage=storage, reuse=reuse
            )
            part.update(busy_figures)
            if on_busy is not None:
                on_busy(busy_figures)
        print(mode, part, flush=True)
    if inline_reports:
        inline = measure_busy(
            spec,
            base,
            busy_trials=busy_trials,
            busy=busy,
            slots=slots,
            storage=storage,
            reuse=True,
            background=False,
        )
        figures["modes"]["reused_processes_inline_reports"] = inline
        figures["device_busy_fraction_inline_reports"] = inline["device_busy_fraction"]
        print("reused_processes_inline_reports", inline, flush=True)
    reused = figures["modes"]["reused_processes"]
    figures["trial_overhead_s"] = reused["startup_s_median"]
    figures["trial_handoff_s"] = reused["handoff_s_median"]
    figures["device_busy_fraction"] = reused.get("device_busy_fraction")
    figures["targets"] = {"trial_overhead_s": "<= 2", "device_busy_fraction": ">= 0.9"}
    return figures


def measure_multi_worker(
    spec: Path, base: list[str], *, trials: int, workers: int, storage: str
) -> dict[str, Any]:
    """Start-up of multi-worker trials (Ray Train DDP), one at a time: each starts a Train controller
    and a worker group of new processes (a reused trial process cannot keep a worker group: the
    target's ≤ 2 s is for single-device trials). `workers_start_s` is Ray Train's part: from the
    trial function's start to rank 0's loop (controller, worker processes, process group)."""
    overrides = [
        *base,
        f"search.num_samples={trials}",
        "search.max_concurrent=1",
        "search.max_epochs=1",
        f"data.max_train_samples={32 * workers}",
        "data.max_validation_samples=32",
        "strategies={full: {}, linear_probe: {}}",
        f"resources.workers_per_trial={workers}",
        # Below one CPU each: the trial driver's 0.01 CPU must fit beside the workers on 2 cores.
        f"resources.cpus_per_worker={0.9 if (os.cpu_count() or 1) <= workers else 1}",
    ]
    found, events, _ = _search(spec, overrides, storage, f"overhead-{workers}-workers")
    part = {"workers_per_trial": workers, **_overhead_figures(found, events)}
    print(f"{workers} workers per trial", part, flush=True)
    return part


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tiny BERT built from code (about a minute)")
    parser.add_argument("--trials", type=int, default=6, help="trials per overhead search (default 6)")
    parser.add_argument(
        "--parts",
        default="single,multi_worker",
        help="single (one-worker trials: overhead and busy, both modes), multi_worker (2-worker DDP "
        "trials' start-up); default both. Only a full run refreshes summary.json",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"single", "multi_worker"}:
        parser.error(f"unknown parts {sorted(parts - {'single', 'multi_worker'})}")

    from tlsearch.search.runner import connect

    storage = tempfile.mkdtemp(prefix="tlsearch-overhead-")
    # The audit, baselines and finalize off: the figures are of the search's own trials.
    base = [
        "search.scheduler.type=fifo",
        "tracking.wandb.mode=disabled",
        "search.seed_configs=none",
        "search.baselines=[]",
        "audit.enabled=false",
        "finalize.after_search=false",
    ]
    if args.quick:
        from tlsearch.testing import make_tiny_bert

        model_dir = make_tiny_bert(Path(storage) / "tiny-bert")
        base += [f"model.name={model_dir}", "model.max_length=32"]
    slots = max(1, min(2, os.cpu_count() or 1))
    busy = [
        "search.max_epochs=3",
        f"data.max_train_samples={1024 if args.quick else 192}",
        "data.max_validation_samples=64",
    ]
    connect(None)  # one warm cluster for every search below
    figures: dict[str, Any] = {}
    if "single" in parts:
        figures = measure(
            DEMO,
            base,
            overhead_trials=args.trials,
            busy_trials=3 * slots,
            busy=busy,
            slots=slots,
            storage=storage,
            inline_reports=True,
        )
    if "multi_worker" in parts:
        figures["multi_worker"] = measure_multi_worker(
            DEMO, base, trials=args.trials, workers=2, storage=storage
        )
    figures["quick"] = args.quick
    full = parts == {"single", "multi_worker"}
    name = (
        "trial_overhead" + ("" if full else "_" + "_".join(sorted(parts))) + ("_quick" if args.quick else "")
    )
    command = "python benchmarks/trial_overhead.py " + " ".join(sys.argv[1:])
    print(write_result(name, figures, command.strip()))
    if not args.quick and full:
        from benchmarks.summary import refresh

        refresh()


if __name__ == "__main__":
    main()
