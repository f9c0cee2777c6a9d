"""The results on disk: a contract other tools and tests rely on.

<run_dir>/
  epochs.jsonl      one line per reported epoch, appended as results arrive (live view)
  events.jsonl      trial start / checkpoint / end events
  trials.parquet    one row per trial, rewritten as trials finish
  epochs.parquet    one row per trial per epoch (deduplicated: a resumed trial may repeat an epoch)
  best.json         the best trial
  spec.resolved.yaml
Everything here is derived from the two JSONL logs, so a resumed search continues them.

The layout of a run directory (these files, Tune's experiment state with the pickled searcher, the
checkpoints) has a version, recorded in spec.resolved.yaml (`resolved.layout_version`; none: 1,
tlsearch 0.1). `tlsearch resume` continues only runs of this version; `tlsearch report` reads any.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tlsearch.spec import vocab

EPOCHS_LOG = "epochs.jsonl"
EVENTS_LOG = "events.jsonl"
TRIALS_TABLE = "trials.parquet"
EPOCHS_TABLE = "epochs.parquet"
BEST_FILE = "best.json"
REPORT_SUMMARY = "report.json"  # the report's figures, for scripts (tlsearch.results.report)
RESOLVED_SPEC = "spec.resolved.yaml"
# 2: strategies as packages, typed trial configs, the searcher's policy in parts (tlsearch 0.2).
LAYOUT_VERSION = 2

STATUSES = ("completed", "stopped_early", "error", "running")
# events.jsonl: {"event": "baseline", "trial_id", "baseline"} marks a search trial that serves as a
# baseline (the default linear probe the search ran as a seed configuration).
BASELINE_EVENT = "baseline"
GAIN_BASELINES = ("majority", "scratch")  # what the transfer gain is measured against
METRICS = tuple(vocab.METRICS)
# Reported each epoch but constant for a trial: copied onto its trials.parquet row.
TRIAL_CONSTANTS = (
    "trainable_params",
    "node_id",
    "node_ip",
    "worker_nodes",
    "driver_node",
    "workers",
    "parallelism",  # none (one process) | ddp | fsdp (sharded): tlsearch.train.sharding
    "param_groups",
    "workers_start_s",
    "model_load_s",
    "data_load_s",
    "setup_s",
    "first_step_at",
    "feature_cache",  # built | reused | off | none | unsupported (tlsearch.train.features)
    "feature_cache_s",  # seconds spent building (or waiting for) the cached features
    "feature_cache_reason",  # why it was off: setting | augmentation | mixup (else null)
    "head_probe_s",  # lp_ft: the head probe before the first epoch, its feature cache included
    "head_probe_loss",  # lp_ft: the probe's last epoch's mean training loss
    "host_rss_at_start_gib",  # rank 0's resident memory when the trial began (tlsearch.train.host_memory)
    # A trial that continues another (ASHA's promotion) counts on from that one's wall and device
    # seconds; this is the part it inherited (0 otherwise): spent_device_s.
    "inherited_device_s",
)


def spent_device_s(trial: dict[str, Any]) -> float:
    """Device-seconds a trial spent itself (trials.parquet row): not those of a trial it continued."""
    return (trial.get("device_s") or 0.0) - (trial.get("inherited_device_s") or 0.0)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    # One write per line, flushed and synced: a driver killed mid-search loses at most this line.
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed driver
    return records


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def abandoned_trials(run_dir: Path) -> set[str]:
    """Trials a killed driver had started but the resumed search never knew (see search.runner)."""
    return {e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e.get("event") == "abandoned"}


def ended_trials(run_dir: Path) -> frozenset[str]:
    """Trials the recorder saw end (completed, stopped or failed for good)."""
    return frozenset(e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e.get("event") == "end")


def epoch_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Deduplicated epoch rows (last report of each (trial, epoch) wins), with checkpoints attached."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    abandoned = abandoned_trials(run_dir)
    for record in read_jsonl(run_dir / EPOCHS_LOG):
        if record["trial_id"] not in abandoned:
            rows[(record["trial_id"], int(record["epoch"]))] = record
    for event in read_jsonl(run_dir / EVENTS_LOG):
        if event.get("event") == "checkpoint":
            row = rows.get((event["trial_id"], int(event["epoch"])))
            if row is not None:
                row["checkpoint"] = event["path"]
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1]))]


def trial_rows(run_dir: Path, metric: str, mode: str, max_epochs: int) -> list[dict[str, Any]]:
    starts: dict[str, dict[str, Any]] = {}
    start_times: dict[str, list[float]] = {}  # a retried or resumed trial starts again
    ends: dict[str, dict[str, Any]] = {}
    marked: dict[str, str] = {}  # search trials that also serve as a baseline
    for event in read_jsonl(run_dir / EVENTS_LOG):
        if event.get("event") == BASELINE_EVENT:
            marked[event["trial_id"]] = event["baseline"]
        elif event.get("event") == "start":
            starts.setdefault(event["trial_id"], event)
            start_times.setdefault(event["trial_id"], []).append(event.get("time", 0.0))
        elif event.get("event") == "end":
            ends[event["trial_id"]] = event  # the last word on a retried or resumed trial
    for trial_id in abandoned_trials(run_dir):
        starts.pop(trial_id, None)
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for epoch_row in epoch_rows(run_dir):
        by_trial.setdefault(epoch_row["trial_id"], []).append(epoch_row)

    out = []
    for trial_id, start in starts.items():
        epochs = by_trial.get(trial_id, [])
        end = ends.get(trial_id)
        row: dict[str, Any] = {"trial_id": trial_id, "strategy": start["config"].get("strategy")}
        row.update({k: v for k, v in start["config"].items() if k not in ("strategy", "baseline")})
        # A baseline run outside the search names itself in its config; a search trial may be marked.
        row["baseline"] = start["config"].get("baseline") or marked.get(trial_id)
        row["in_search"] = start["config"].get("baseline") is None
        if end is None:
            row["status"] = "running"
        elif end["status"] == "error":
            row["status"] = "error"
        elif not row["in_search"]:
            row["status"] = "completed"  # a baseline runs as long as it was asked to
        else:
            row["status"] = "completed" if epochs and epochs[-1]["epoch"] >= max_epochs else "stopped_early"
        row["error"] = end.get("error") if end else None
        row["ended_by"] = end.get("ended_by") if end else None  # time_budget: the search's budget ran out
        row["epochs"] = epochs[-1]["epoch"] if epochs else 0
        for name in METRICS:
            values = [v for v in (_finite(e.get(name)) for e in epochs) if v is not None]
            row[name] = _finite(epochs[-1].get(name)) if epochs else None
            pick = min if vocab.METRICS[name] == "min" else max
            row[f"best_{name}"] = pick(values) if values else None
        last = epochs[-1] if epochs else {}
        row["wall_s"] = _finite(last.get("wall_s"))
        row["device_s"] = _finite(last.get("device_s"))
        for key in TRIAL_CONSTANTS:
            row[key] = last.get(key)
        row["checkpoint"] = _best_checkpoint(run_dir, epochs, metric, mode)
        # Seconds from Tune starting the trial (the driver's clock) to the start of its first training step.
        first_step = row.get("first_step_at")
        started = [t for t in start_times.get(trial_id, []) if first_step and t <= first_step]
        row["startup_s"] = first_step - max(started) if first_step and started else None
        out.append(row)
    return out


def _best_checkpoint(run_dir: Path, epochs: list[dict[str, Any]], metric: str, mode: str) -> str | None:
    """The best epoch's checkpoint that still exists: relative to the run directory when inside it,
    else its absolute path or URI (`checkpoint_storage`)."""
    candidates = [e for e in epochs if e.get("checkpoint") and _finite(e.get(metric)) is not None]
    pick = min if mode == "min" else max
    # Best first; older checkpoints are deleted as better ones arrive (checkpoints_to_keep).
    for best in sorted(candidates, key=lambda e: e[metric], reverse=pick is max):
        if checkpoint_exists(best["checkpoint"]):
            location = best["checkpoint"]
            if "://" in location or not Path(location).is_relative_to(run_dir):
                return location
            return os.path.relpath(location, run_dir)
    return None


def checkpoint_uri(path: str, storage_root: str | None) -> str:
    """Ray hands out checkpoint paths without their filesystem's scheme (`bucket/prefix/...` for
    s3://bucket/prefix): put the scheme of `checkpoint_storage` back. Local paths stay paths."""
    if storage_root and "://" in storage_root and "://" not in path:
        scheme = storage_root.split("://", 1)[0]
        if scheme != "file":
            return f"{scheme}://{path}"
    return path.removeprefix("file://")


def checkpoint_exists(location: str) -> bool:
    if "://" not in location:
        return Path(location).exists()
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def checkpoint_location(run_dir: Path, value: str) -> str:
    """A trials.parquet `checkpoint` value as an absolute path or a URI."""
    return value if "://" in value else str(Path(run_dir) / value)


def _table(rows: list[dict[str, Any]], leading: Iterable[str]) -> pa.Table:
    columns: list[str] = list(leading)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return (
        pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        if rows
        else pa.table({c: pa.array([], pa.null()) for c in columns})
    )


def write_tables(run_dir: Path, metric: str, mode: str, max_epochs: int) -> list[dict[str, Any]]:
    """Rewrite trials.parquet, epochs.parquet and best.json from the logs. Returns the trial rows."""
    trials = trial_rows(run_dir, metric, mode, max_epochs)
    epochs = [{k: v for k, v in row.items() if k != "param_groups"} for row in epoch_rows(run_dir)]
    _atomic_parquet(_table(trials, ("trial_id", "strategy")), run_dir / TRIALS_TABLE)
    _atomic_parquet(_table(epochs, ("trial_id", "strategy", "epoch")), run_dir / EPOCHS_TABLE)
    best = best_trial(trials, metric, mode)
    if best is not None:
        tmp = run_dir / f".{BEST_FILE}.tmp"
        tmp.write_text(json.dumps(best, indent=2, default=_json_default))
        tmp.replace(run_dir / BEST_FILE)
    return trials


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # readers never see a half-written file


def best_trial(trials: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The search's best trial (baselines run outside the search never are), with the baselines and
    the transfer gain when they ran."""
    scored = [
        t
        for t in trials
        if t.get(f"best_{metric}") is not None and t["status"] != "error" and t.get("in_search", True)
    ]
    if not scored:
        return None
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda t: t[f"best_{metric}"])
    baselines = {
        t["baseline"]: {
            "trial_id": t["trial_id"],
            "value": t.get(f"best_{metric}"),
            "epochs": t.get("epochs"),
            "wall_s": t.get("wall_s"),
            "device_s": t.get("device_s"),
        }
        for t in trials
        if t.get("baseline") and t["status"] != "error"
    }
    # Columns of the other strategies' parameters are empty (None) on this trial's row.
    config = {k: v for k, v in best.items() if k == "strategy" or ("/" in k and v is not None)}
    return {
        "trial_id": best["trial_id"],
        "strategy": best["strategy"],
        "metric": metric,
        "mode": mode,
        "value": best[f"best_{metric}"],
        "config": config,
        "metrics": {k: best[k] for k in best if k in METRICS or k.startswith("best_")},
        "epochs": best["epochs"],
        "status": best["status"],
        "checkpoint": best["checkpoint"],
        "baselines": baselines,
        "transfer_gain": transfer_gain(best[f"best_{metric}"], baselines, mode),
    }


def transfer_gain(best: float, baselines: dict[str, dict[str, Any]], mode: str) -> float | None:
    """How much better the best trial is than the better of `majority` and `scratch` on the search
    metric (positive: better, whichever way the metric points); None when neither ran."""
    references = [
        b["value"] for name, b in baselines.items() if name in GAIN_BASELINES and b["value"] is not None
    ]
    if not references:
        return None
    return best - max(references) if mode == "max" else min(references) - best


def read_table_whole(path: Path) -> pa.Table:
    """A table a running search may be replacing (trials.parquet, epochs.parquet), read whole.

    `pq.read_table(path)` opens the path more than once (footer, then pages), so a replace between
    the opens pairs one file's footer with another's pages ("Deserializing page header failed").
    One open handle keeps reading the file it opened, whatever replaces the path meanwhile."""
    with Path(path).open("rb") as handle:
        return pq.read_table(handle)


def read_trials(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / TRIALS_TABLE
    if not path.exists():
        return []
    return read_table_whole(path).to_pylist()
