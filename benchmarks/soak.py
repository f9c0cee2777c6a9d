"""A long search's resources: a 50-trial search (every strategy, one reused trial process) must leak
no processes or placement groups between trials, and its trial process's memory must stay flat.

    .venv/bin/python benchmarks/soak.py [--trials 50]   # -> results/soak.json

The search runs in this process on a local Ray cluster of its own (tlsearch's `run_search`, a tiny
BERT built from code, FIFO, one trial at a time, `training.reuse_processes` on, as by default). A
thread samples, every 0.5 s, the cluster's placement groups in state CREATED, its live actors, and the
Ray worker processes under its raylet. Figures (issue 26's targets):
- `soak_rss_growth_mb`: the trial process's resident memory at the start of its last trial less at
  the start of its 5th (target <= 100 MB);
- `soak_leftover_placement_groups`, `soak_leftover_trial_actors`: held once the search ended
  (target 0), and the peaks while it ran (at most one trial's, plus the one Tune readies next).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from benchmarks.summary import refresh

STRATEGIES = ("linear_probe", "partial", "full", "lora", "gradual")
RSS_GROWTH_LIMIT_MB = 100


class ClusterSampler(threading.Thread):
    """Placement groups, live actors and worker processes of the local cluster, twice a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import ray

        while not ray.is_initialized() and not self.stopping.is_set():
            time.sleep(0.2)
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):  # the cluster going down at the end
                self.samples.append(snapshot())
            self.stopping.wait(0.5)


def snapshot() -> dict[str, Any]:
    import psutil
    import ray
    from ray.util.state import list_actors, list_placement_groups

    node = ray._private.worker.global_worker.node
    address = f"http://{node.address_info['webui_url']}"  # this cluster's, never another one's
    groups = list_placement_groups(address=address, filters=[("state", "=", "CREATED")], limit=1000)
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    # Busy ones: Ray keeps a few idle workers (`ray::IDLE`) ready for the next task.
    workers = [
        p for p in raylet.children(recursive=True) if p.name().startswith("ray::") and "IDLE" not in p.name()
    ]
    return {
        "time": time.time(),
        "placement_groups": len(groups),
        "trial_actors": sum(a.class_name not in ("_StatsActor",) for a in actors),
        "worker_processes": len(workers),
    }


def soak(trials: int, root: Path | None = None) -> dict[str, Any]:
    """Run the search (its files under `root`, a new temporary folder by default) and measure it."""
    from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, read_jsonl, read_trials
    from tlsearch.search.runner import run_search
    from tlsearch.spec import validate_spec
    from tlsearch.testing import make_tiny_bert, text_rows, text_spec, write_parquet

    root = root or Path(tempfile.mkdtemp(prefix="tlsearch-soak-"))
    bert = make_tiny_bert(root / "bert")
    data = {
        "train": write_parquet(text_rows(120, seed=1), root / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), root / "validation.parquet"),
    }
    spec = validate_spec(
        text_spec(
            bert,
            data,
            root / "runs",
            name="soak",
            search={
                "num_samples": trials,
                "max_epochs": 1,
                "max_concurrent": 1,
                "scheduler": {"type": "fifo"},
            },
            strategies={name: {} for name in STRATEGIES} | {"common": {"batch_size": 8}},
        )
    )
    sampler = ClusterSampler()
    sampler.start()
    started = time.time()
    outcome = run_search(spec)
    wall_s = time.time() - started
    time.sleep(3)  # Tune ends the last trial's actor as fit returns; give it a moment
    after = snapshot()
    sampler.stopping.set()
    sampler.join(timeout=5)
    import ray

    ray.shutdown()

    rows = read_trials(outcome.run_dir)
    started_at = {
        e["trial_id"]: e["time"] for e in read_jsonl(outcome.run_dir / EVENTS_LOG) if e["event"] == "start"
    }
    pid_of = {r["trial_id"]: r["rank0_pid"] for r in read_jsonl(outcome.run_dir / EPOCHS_LOG)}
    by_process: dict[int, list[float]] = {}
    for row in sorted(rows, key=lambda r: started_at[r["trial_id"]]):
        if row["trial_id"] in pid_of and row.get("host_rss_at_start_gib") is not None:
            by_process.setdefault(pid_of[row["trial_id"]], []).append(row["host_rss_at_start_gib"] * 1024)
    longest = max(by_process.values(), key=len)
    growth = longest[-1] - longest[4]
    during = sampler.samples
    return {
        "trials": trials,
        "completed": sum(r["status"] == "completed" for r in rows),
        "strategies": sorted({r["strategy"] for r in rows}),
        "wall_s": round(wall_s, 1),
        "trial_processes": len(by_process),
        "trials_in_longest_process": len(longest),
        "rss_at_trial_5_mb": round(longest[4], 1),
        "rss_at_last_trial_mb": round(longest[-1], 1),
        "soak_rss_growth_mb": round(growth, 1),
        "rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB,
        "peak_placement_groups": max((s["placement_groups"] for s in during), default=None),
        "peak_trial_actors": max((s["trial_actors"] for s in during), default=None),
        "peak_worker_processes": max((s["worker_processes"] for s in during), default=None),
        "samples": len(during),
        "soak_leftover_placement_groups": after["placement_groups"],
        "soak_leftover_trial_actors": after["trial_actors"],
        "leftover_worker_processes": after["worker_processes"],
        "holds": growth <= RSS_GROWTH_LIMIT_MB and after["placement_groups"] == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    figures = soak(args.trials)
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(write_result("soak", figures, f"python benchmarks/soak.py --trials {args.trials}"))
    refresh()


if __name__ == "__main__":
    main()
