"""Time the demo end to end and record what it found: the audit, the search per strategy, the
baselines, the final model on the test split, its ONNX export.

    .venv/bin/python benchmarks/demo_search.py [--spec search_spaces/bbc_news_minilm.yaml] [--set k=v ...]
    .venv/bin/python benchmarks/demo_search.py --search-alone-too   # also the search alone, first

Writes benchmarks/results/demo_search.json: wall seconds of the whole path (Ray start included),
trials by status, the best validation metric per strategy, the audit's counts, the baselines and the
transfer gain, the test metrics with their intervals, ONNX parity and both runtimes' latency. With
`--search-alone-too`, the same spec with the audit, baselines and finalize off runs first, on the same
machine, and `path_over_search` is the ratio of the two wall times. The README's demo figures come
from here.
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
        "--search-alone-too",
        action="store_true",
        help="first run the search alone (no audit, baselines or finalize) and record the ratio",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the search's directory (a temporary one, about 1.6 GB; removed by default)",
    )
    args = parser.parse_args()

    alone = None
    if args.search_alone_too:
        storage = tempfile.mkdtemp(prefix="tlsearch-bench-")
        try:
            alone = measure(args, storage, SEARCH_ALONE)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    storage = tempfile.mkdtemp(prefix="tlsearch-bench-")
    try:
        figures = measure(args, storage)
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    if alone is not None:
        figures["search_alone"] = alone
        figures["path_over_search"] = round(figures["wall_s"] / alone["wall_s"], 3)
    command = "python benchmarks/demo_search.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_result(args.name, figures, command.strip()))
    print(figures)


# The search alone: the same spec with the parts around it off.
SEARCH_ALONE = ["audit.enabled=false", "search.baselines=[]", "finalize.after_search=false"]


def measure(args: argparse.Namespace, storage: str, extra: list[str] | None = None) -> dict:

    from tlsearch.search.runner import run_search
    from tlsearch.spec import load_spec

    spec = load_spec(args.spec, [*args.overrides, *(extra or []), f"storage={storage}"])
    start = time.time()
    outcome = run_search(spec)
    wall = time.time() - start

    metric = spec.search.metric
    key = f"best_{metric}"
    statuses: dict[str, int] = {}
    per_strategy: dict[str, dict] = {}
    for t in outcome.search_trials:
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
        "trials": len(outcome.search_trials),
        "statuses": statuses,
        "epochs_trained": sum(t["epochs"] for t in outcome.search_trials),
        "metric": metric,
        "best_per_strategy": per_strategy,
        # What the search left besides its tables: offline W&B runs (newest directory of each), the
        # Optuna study's trial states, and the report files.
        "wandb_offline_runs": len(latest_offline_runs(outcome.run_dir)),
        "optuna_trials": optuna_states,
        "report_files": sorted(p.name for p in outcome.run_dir.glob("report.*")),
        **_around_the_search(outcome.run_dir),
        # Kept only with --keep; the scratch directory is removed otherwise.
        "run_dir": str(outcome.run_dir) if args.keep else None,
    }
    return figures


def _around_the_search(run_dir: Path) -> dict:
    """The audit's counts, the baselines, the final model's test figures and its export."""
    import json

    def read(path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.exists() else None

    out: dict = {}
    audit = read(run_dir / "audit.json")
    if audit:
        out["audit"] = {
            "status": audit["status"],
            "exact_duplicates_across": audit["exact_duplicates_across"],
            "near_duplicates_across": audit["near_duplicates_across"],
            "label_issues": (audit.get("label_issues") or {}).get("count"),
            "seconds": audit.get("seconds"),
        }
    best = read(run_dir / "best.json")
    if best and best.get("baselines"):
        out["baselines"] = best["baselines"]
        out["transfer_gain_validation"] = best.get("transfer_gain")
    metrics = read(run_dir / "final" / "metrics.json")
    if metrics:
        out["final"] = {
            key: metrics.get(key)
            for key in (
                "retrained",
                "trial_id",
                "strategy",
                "test_accuracy",
                "test_f1_macro",
                "test_roc_auc",
                "ece",
                "intervals",
                "baselines",
                "transfer_gain",
                "seconds",
            )
        }
    export = read(run_dir / "final" / "export.json")
    if export:
        out["export"] = {
            "opset": export["opset"],
            "max_abs_diff": export["max_abs_diff"],
            "argmax_agreement": export["argmax_agreement"],
            "latency": {
                runtime: {k: v for k, v in figures.items() if k.endswith("_ms") or k == "serving_batch"}
                for runtime, figures in export["latency"].items()
            },
        }
    return out


if __name__ == "__main__":
    main()
