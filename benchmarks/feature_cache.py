"""Per-epoch time of a linear-probe trial on cached features against the same trial recomputing the
backbone every step, in one process, on the same data, with the same seed and batch order.

    .venv/bin/python benchmarks/feature_cache.py          # the demo's model and data (5-15 min, below)
    .venv/bin/python benchmarks/feature_cache.py --quick  # a tiny model built from code (under a minute)

Runs, back to back, each one trial of the training loop (tlsearch.train.loop) in this process
(LocalSession, no Ray): uncached, cached (this one builds the features), cached (reuses them),
uncached again; the ratio of the median epoch times of the uncached runs to the cached ones is
`speedup`. The same for a partial trial (`--partial-depth`; 0 leaves it out). Also records the one-off
build time, the cache's size, and the largest difference in any metric between cached and uncached
epochs. Writes benchmarks/results/feature_cache.json (feature_cache_quick.json with --quick).

The full run is eight 3-epoch trials of all-MiniLM-L6-v2 on one CPU thread, six of them running the
backbone over 384 articles each epoch: 12.5 to 14.5 min on a 2-core VM shared with other work (4.5 min
of CPU time), about 5 min on a quiet one.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result

METRICS = ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc")


def demo_spec(storage: Path) -> dict[str, Any]:
    """The demo search's model and data (search_spaces/bbc_news_minilm.yaml)."""
    return {
        "name": "feature-cache-bench",
        "storage": str(storage),
        "model": {
            "source": "hf",
            "name": "builtin:all-minilm-l6-v2",
            "task": "text-classification",
            "max_length": 128,
        },
        "data": {"builtin": "bbc-news", "max_train_samples": 256, "max_validation_samples": 128},
    }


def quick_spec(storage: Path) -> dict[str, Any]:
    """A 2-layer BERT built from code and 256 + 128 short generated texts (tlsearch.testing)."""
    from tlsearch.testing import make_tiny_bert, text_rows, write_parquet

    data = storage / "data"
    return {
        "name": "feature-cache-bench",
        "storage": str(storage),
        "model": {
            "source": "hf",
            "name": str(make_tiny_bert(storage / "tiny-bert")),
            "task": "text-classification",
            "max_length": 16,
        },
        "data": {
            "train": str(write_parquet(text_rows(256, seed=1), data / "train.parquet")),
            "validation": str(write_parquet(text_rows(128, seed=2), data / "validation.parquet")),
            "text_column": "text",
        },
    }


def run_trial(spec: dict[str, Any], run_dir: Path, config: Any, trial_id: str, cache: str) -> list[dict]:
    from tlsearch.search.resolve import resolve_data
    from tlsearch.spec import validate_spec
    from tlsearch.train.inputs import RunContext, TrialInputs
    from tlsearch.train.loop import train_trial
    from tlsearch.train.session import LocalSession

    validated = validate_spec({**spec, "training": {**spec.get("training", {}), "feature_cache": cache}})
    data, hashes = resolve_data(validated, run_dir, reuse=True)
    run = RunContext(str(run_dir), validated, data, False, data_sha256=hashes)
    session = LocalSession()
    started = time.time()
    train_trial(TrialInputs(run, config, trial_id, started), session)
    print(
        f"[bench] {trial_id}: {time.time() - started:.1f} s, epochs "
        f"{[round(r['epoch_s'], 3) for r in session.reports]}",
        flush=True,
    )
    return session.reports


def compare(config: Any, spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Uncached, cached (builds), cached (reuses), uncached: one trial each, back to back."""
    label = config.strategy
    runs = {
        "uncached_1": run_trial(spec, run_dir, config, f"{label}-uncached-1", "off"),
        "cached_build": run_trial(spec, run_dir, config, f"{label}-cached-build", "auto"),
        "cached_reuse": run_trial(spec, run_dir, config, f"{label}-cached-reuse", "auto"),
        "uncached_2": run_trial(spec, run_dir, config, f"{label}-uncached-2", "off"),
    }
    assert runs["cached_build"][0]["feature_cache"] == "built", runs["cached_build"][0]["feature_cache"]
    assert runs["cached_reuse"][0]["feature_cache"] == "reused"
    uncached = [r["epoch_s"] for key in ("uncached_1", "uncached_2") for r in runs[key]]
    cached = [r["epoch_s"] for key in ("cached_build", "cached_reuse") for r in runs[key]]
    difference = {
        metric: max(
            abs(c[metric] - u[metric])
            for key in ("cached_build", "cached_reuse")
            for c, u in zip(runs[key], runs["uncached_1"], strict=True)
        )
        for metric in METRICS
    }
    from tlsearch.train.features import FEATURES_DIR, FeatureStore

    store = FeatureStore(run_dir / FEATURES_DIR)
    key = next(
        k
        for k in (p.name for p in store.root.iterdir() if p.is_dir())
        if k.startswith("head" if label == "linear_probe" else "block")
    )
    manifest = store.lookup(key)
    assert manifest is not None
    return {
        "config": config.as_dict(),
        "epochs": len(runs["uncached_1"]),
        "uncached_epoch_s": round(statistics.median(uncached), 4),
        "cached_epoch_s": round(statistics.median(cached), 4),
        "speedup": round(statistics.median(uncached) / statistics.median(cached), 1),
        "uncached_epoch_s_all": [round(s, 4) for s in uncached],
        "cached_epoch_s_all": [round(s, 4) for s in cached],
        "build_s": manifest["built_by"]["seconds"],
        "reuse_s": round(runs["cached_reuse"][0]["feature_cache_s"], 3),
        "cache_mib": round(sum(f["bytes"] for f in manifest["files"].values()) / 2**20, 2),
        "cache_rows": {s: info["rows"] for s, info in manifest["splits"].items()},
        "cache_row_shape": manifest["splits"]["train"]["row_shape"],
        "max_metric_difference": difference,
        "metrics_agree": all(d <= 1e-4 for d in difference.values()),
        "final_uncached": {m: runs["uncached_1"][-1][m] for m in METRICS},
        "final_cached": {m: runs["cached_reuse"][-1][m] for m in METRICS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model built from code (about a minute)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per trial (default 3; 2 with --quick)"
    )
    parser.add_argument(
        "--partial-depth",
        type=int,
        default=None,
        help="also time a partial trial of this unfreeze_depth (default 2; 1 with --quick; 0: none)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo's cpus_per_worker)")
    args = parser.parse_args()
    storage = Path(tempfile.mkdtemp(prefix="tlsearch-bench-features-"))
    try:
        figures = measure(args, storage)
    finally:
        shutil.rmtree(storage, ignore_errors=True)  # the partial cache alone is 72 MiB
    command = "python benchmarks/feature_cache.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_result("feature_cache_quick" if args.quick else "feature_cache", figures, command.strip()))
    print({k: v for k, v in figures.items() if k not in ("linear_probe", "partial")})
    for strategy in ("linear_probe", "partial"):
        if strategy in figures:
            f = figures[strategy]
            print(
                f"{strategy}: {f['uncached_epoch_s']} s/epoch uncached, {f['cached_epoch_s']} s cached "
                f"({f['speedup']}x); build {f['build_s']} s, {f['cache_mib']} MiB; "
                f"max metric difference {max(f['max_metric_difference'].values()):.2g}"
            )


def measure(args: argparse.Namespace, storage: Path) -> dict[str, Any]:
    from tlsearch.testing import trial_config

    spec = quick_spec(storage) if args.quick else demo_spec(storage)
    epochs = args.epochs or (2 if args.quick else 3)
    spec["search"] = {"max_epochs": epochs}
    spec["resources"] = {"cpus_per_worker": args.threads}
    common = {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16}
    linear_probe = trial_config("linear_probe", head_lr=1e-2, **common)
    started = time.time()
    figures: dict[str, Any] = {
        "model": spec["model"]["name"],
        "max_length": spec["model"]["max_length"],
        "threads": args.threads,
        "quick": args.quick,
    }
    figures["linear_probe"] = compare(linear_probe, spec, storage / "run")
    depth = (1 if args.quick else 2) if args.partial_depth is None else args.partial_depth
    if depth:
        partial = trial_config(
            "partial", head_lr=1e-3, backbone_lr=5e-5, layer_decay=0.75, unfreeze_depth=depth, **common
        )
        figures["partial"] = compare(partial, spec, storage / "run")
    figures["speedup"] = figures["linear_probe"]["speedup"]
    figures["metrics_agree"] = all(
        figures[s]["metrics_agree"] for s in ("linear_probe", "partial") if s in figures
    )
    figures["wall_s"] = round(time.time() - started, 1)
    return figures


if __name__ == "__main__":
    main()
