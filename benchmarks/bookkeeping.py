"""Tune bookkeeping at scale: 1,000 replayed trials, 32 at once, on a simulated 4-node cluster.

    .venv/bin/python benchmarks/bookkeeping.py            # 1,000 trials, 32 at once, 4 nodes × 8 CPUs
    .venv/bin/python benchmarks/bookkeeping.py --quick    # 100 trials, 8 at once, 2 nodes × 4 CPUs

The nodes are `ray.cluster_utils.Cluster` nodes on this machine (logical CPUs). Trials cost nothing:
the learning-curve replay trainable (benchmarks/replay.py) reports a recorded configuration's
epochs without training or sleeping, with `reuse_actors=True`, under the demo spec's searcher and
scheduler (TPE + ASHA, built by tlsearch.search.runner.search_algorithms). What is left is the
driver's work: Tune's loop, the searcher, the scheduler, result logging, and tlsearch's own
ResultsRecorder (the results contract on disk; W&B off), which `--no-recorder` leaves out.

Reports: driver overhead per trial (search wall time / trials), the same after every trial actor
has started (steady state, without Ray's actor start-up), the searcher's own `suggest` time per
trial (first and last hundred apart: TPE's cost grows with the study), and the driver's peak RSS.
Writes benchmarks/results/bookkeeping.json (--quick: bookkeeping_quick.json) with
`bookkeeping_s_per_trial`. Target: ≤ 0.2 s per trial.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, ray_runtime_env, write_result
from benchmarks.learning_curves import DEMO_SPEC, GRID, TABLE, synthetic_curves


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def driver_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def start_cluster(nodes: int, cpus_per_node: int) -> Any:
    """A head and `nodes - 1` worker nodes on this machine, each with its own raylet."""
    from ray.cluster_utils import Cluster

    # The machine's own address: a Cluster node pinned to 127.0.0.1 binds its GCS there, while
    # ray.init rewrites a loopback address into the machine's and then cannot reach it.
    node_args = {"num_cpus": cpus_per_node}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    return cluster


def measure(
    curves: Any,
    base: dict[str, Any],
    *,
    trials: int,
    concurrent: int,
    recorder: bool,
    log: Any = print,
) -> dict[str, Any]:
    """One replayed search of `trials` zero-cost trials on the connected cluster."""
    from benchmarks.replay import replay_spec, run_replay
    from tlsearch.search.recorder import ResultsRecorder
    from tlsearch.spec.model import WandbSpec

    # Repeats on: 1,000 trials from a table of 28 configurations (with `skip_duplicates` the search
    # would end once each had run).
    spec = replay_spec(base, curves, num_samples=trials, skip_duplicates=False)
    storage = tempfile.mkdtemp(prefix="tlsearch-bookkeeping-")
    callbacks = []
    if recorder:
        run_dir = Path(storage) / "run"
        run_dir.mkdir()
        s = spec.search
        callbacks.append(
            ResultsRecorder(str(run_dir), s.objectives, s.max_epochs, spec.name, WandbSpec(mode="disabled"))
        )
    rss_before = current_rss_mib()
    cpu_before = driver_cpu_s()
    result = run_replay(
        spec, curves, max_concurrent=concurrent, storage_path=storage, callbacks=callbacks, reuse_actors=True
    )
    rss_after = current_rss_mib()
    cpu = driver_cpu_s() - cpu_before

    # Steady state: from the moment the last trial actor reported for the first time (every actor
    # started) to the end, over the trials that started after that moment.
    first_seen: dict[str, float] = {}
    for event in result.events:
        first_seen.setdefault(event.trial_id, event.time)
    end = result.started_at + result.wall_s
    starts = sorted(result.trial_starts.values())
    warm_at = _last_actor_ready(result, first_seen)
    later = [t for t in starts if t >= warm_at]
    steady = (end - warm_at) / len(later) if later else None
    suggest = result.suggest_s
    figures = {
        "trials": result.trials,
        "errors": result.errors,
        "epochs_reported": len(result.events),
        "max_concurrent": concurrent,
        "results_recorder": recorder,
        "search_wall_s": round(result.wall_s, 2),
        "s_per_trial": round(result.wall_s / result.trials, 4),
        # CPU seconds of the driver process itself: what the driver's work costs, apart from
        # waiting on the cluster (and much less sensitive to a busy machine than wall time).
        "driver_cpu_s_per_trial": round(cpu / result.trials, 4),
        "actors_started": len(result.actor_pids),
        "until_every_actor_started_s": round(warm_at - result.started_at, 2),
        "steady_s_per_trial": round(steady, 4) if steady is not None else None,
        "steady_trials": len(later),
        "suggest_s_per_trial": round(statistics.mean(suggest), 5) if suggest else None,
        "suggest_s_first_100": round(statistics.mean(suggest[:100]), 5) if suggest else None,
        "suggest_s_last_100": round(statistics.mean(suggest[-100:]), 5) if suggest else None,
        "suggest_s_total": round(sum(suggest), 2),
        "driver_rss_before_mib": round(rss_before, 1),
        "driver_rss_after_mib": round(rss_after, 1),
        "driver_peak_rss_mib": round(peak_rss_mib(), 1),
    }
    log(f"[bookkeeping] {figures}")
    return figures


def _last_actor_ready(result: Any, first_seen: dict[str, float]) -> float:
    """When the last of the trial actors first reported: Ray's actor start-up is over by then."""
    per_actor: dict[int, float] = {}
    for trial_id, pid in result.trial_pids.items():
        if trial_id in first_seen:
            per_actor[pid] = min(per_actor.get(pid, first_seen[trial_id]), first_seen[trial_id])
    return max(per_actor.values()) if per_actor else result.started_at


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100 trials, 8 at once, 2 nodes × 4 CPUs")
    parser.add_argument("--trials", type=int, help="default 1000 (--quick 100)")
    parser.add_argument("--concurrent", type=int, help="trials at once (default 32; --quick 8)")
    parser.add_argument("--nodes", type=int, help="simulated nodes (default 4; --quick 2)")
    parser.add_argument("--cpus-per-node", type=int, help="logical CPUs per node (default 8; --quick 4)")
    parser.add_argument("--no-recorder", action="store_true", help="leave tlsearch's ResultsRecorder out")
    parser.add_argument(
        "--table", type=Path, default=TABLE, help="learning-curve table (when missing: a synthetic one)"
    )
    args = parser.parse_args()
    trials = args.trials or (100 if args.quick else 1000)
    concurrent = args.concurrent or (8 if args.quick else 32)
    nodes = args.nodes or (2 if args.quick else 4)
    cpus = args.cpus_per_node or (4 if args.quick else 8)

    import ray

    from benchmarks.replay import LearningCurves

    base = yaml.safe_load(DEMO_SPEC.read_text())
    real = args.table.exists() and not args.quick
    curves = LearningCurves.read(args.table) if real else synthetic_curves(GRID, base["search"]["max_epochs"])
    started = time.time()
    cluster = start_cluster(nodes, cpus)
    try:
        ray.init(address=cluster.address, log_to_driver=False, runtime_env=ray_runtime_env())
        figures = measure(curves, base, trials=trials, concurrent=concurrent, recorder=not args.no_recorder)
    finally:
        ray.shutdown()
        cluster.shutdown()
    figures = {
        "quick": args.quick,
        "nodes": nodes,
        "cpus_per_node": cpus,
        "table": str(args.table.relative_to(ROOT)) if real else "synthetic (the demo's grid)",
        "bookkeeping_s_per_trial": figures["s_per_trial"],
        **figures,
        "wall_s": round(time.time() - started, 1),
    }
    name = "bookkeeping_quick" if args.quick else "bookkeeping"
    command = "python benchmarks/bookkeeping.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_result(name, figures, command.strip()))
    print(
        f"bookkeeping_s_per_trial: {figures['bookkeeping_s_per_trial']} (steady state "
        f"{figures['steady_s_per_trial']}; suggest {figures['suggest_s_per_trial']}); "
        f"driver peak RSS {figures['driver_peak_rss_mib']} MiB; {figures['wall_s']} s"
    )


if __name__ == "__main__":
    main()
