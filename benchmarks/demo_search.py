"""Time the demo search end to end and record what it found, per strategy.

    .venv/bin/python benchmarks/demo_search.py [--spec search_spaces/bbc_news_minilm.yaml] [--set k=v ...]

Writes benchmarks/results/demo_search.json: wall seconds of the whole search (Ray start included),
trials by status, and the best validation metric per strategy. The README's demo time comes from here.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "bbc_news_minilm.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--name", default="demo_search", help="result file name under benchmarks/results/")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the search's directory (a temporary one, about 1.6 GB; removed by default)",
    )
    args = parser.parse_args()

    storage = tempfile.mkdtemp(prefix="tlsearch-bench-")
    try:
        figures = measure(args, storage)
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    command = "python benchmarks/demo_search.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_result(args.name, figures, command.strip()))
    print(figures)


def measure(args: argparse.Namespace, storage: str) -> dict:
    from tlsearch.search.runner import run_search
    from tlsearch.spec import load_spec

    spec = load_spec(args.spec, [*args.overrides, f"storage={storage}"])
    start = time.time()
    outcome = run_search(spec)
    wall = time.time() - start

    metric = spec.search.metric
    key = f"best_{metric}"
    statuses: dict[str, int] = {}
    per_strategy: dict[str, dict] = {}
    for t in outcome.trials:
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
        current = per_strategy.get(t["strategy"])
        if t.get(key) is not None and (current is None or t[key] > current[key]):
            per_strategy[t["strategy"]] = {
                key: t[key],
                "trial_id": t["trial_id"],
                "epochs": t["epochs"],
                "trainable_params": t["trainable_params"],
                "device_s": t["device_s"],
            }
    from tlsearch.results.report import latest_offline_runs, load_resolved
    from tlsearch.results.study import load_recorded_study

    study = load_recorded_study(load_resolved(outcome.run_dir))
    optuna_states: dict[str, int] = {}
    for trial in study.trials if study else []:
        optuna_states[trial.state.name] = optuna_states.get(trial.state.name, 0) + 1
    figures = {
        "spec": str(Path(args.spec).resolve().relative_to(ROOT)),
        "overrides": args.overrides,
        "wall_s": round(wall, 1),
        "trials": len(outcome.trials),
        "statuses": statuses,
        "epochs_trained": sum(t["epochs"] for t in outcome.trials),
        "metric": metric,
        "best_per_strategy": per_strategy,
        # What the search left besides its tables: offline W&B runs (newest directory of each), the
        # Optuna study's trial states, and the report files.
        "wandb_offline_runs": len(latest_offline_runs(outcome.run_dir)),
        "optuna_trials": optuna_states,
        "report_files": sorted(p.name for p in outcome.run_dir.glob("report.*")),
        # Kept only with --keep; the scratch directory is removed otherwise.
        "run_dir": str(outcome.run_dir) if args.keep else None,
    }
    return figures


if __name__ == "__main__":
    main()
