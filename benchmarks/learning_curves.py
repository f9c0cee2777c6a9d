"""Record the learning-curve table once: every configuration of a fixed grid over a discretized
version of the demo's space, with every epoch's metrics and cost.

    .venv/bin/python benchmarks/learning_curves.py            # 28 configurations, about 17 min (2-core CPU)
    .venv/bin/python benchmarks/learning_curves.py --quick    # 4 configurations of a tiny model, about 1 min
    .venv/bin/python benchmarks/learning_curves.py --spec search_spaces/mnist_efficientnet_lite0.yaml \
        --name learning_curves_vision --out benchmarks/data/learning_curves_vision.parquet
                                                              # the vision example: 22 configurations
    .venv/bin/python benchmarks/learning_curves.py --grid wide --validation-samples all \
        --name learning_curves_wide --out benchmarks/data/learning_curves_wide.parquet
                                                              # the demo's whole space: 61 configs, 1 hour

It is one `tlsearch run` of the demo spec (search_spaces/bbc_news_minilm.yaml) whose knobs take the
grid's values (the varied ones below; every other knob fixed at its seed-config value), with
`search.seed_configs` = the whole grid, `num_samples` = its size, the FIFO scheduler (no early
stopping) and the demo's max_epochs. The run's epochs.parquet / trials.parquet then become
benchmarks/data/learning_curves.parquet: one row per (configuration, epoch) with every metric, the
epoch's own time (`epoch_s`), what it added to the trial's wall and device seconds (`epoch_wall_s`,
`epoch_device_s`; the first epoch includes the trial's set-up) and the cumulative `wall_s` /
`device_s`. benchmarks/search_efficiency.py replays it; benchmarks/results/learning_curves.json says
how long the recording took and what it found. `--quick` records a tiny grid on a tiny BERT built
from code (tlsearch.testing) instead, for development and the tests. `--spec` records the vision
example's grid instead (VISION_GRID): a second table for search_efficiency.py (`--spec`, `--table`).
`--validation-samples all` scores every epoch on the whole validation split: the demo's 128
articles score in steps of 0.8 points, coarser than the replay's 0.5-point target.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, environment, write_result

DEMO_SPEC = ROOT / "search_spaces" / "bbc_news_minilm.yaml"
TABLE = ROOT / "benchmarks" / "data" / "learning_curves.parquet"

# The grid: the knobs that matter take 2-4 values; the rest keep their seed-config values
# (each knob's `Knob.preferred`, tlsearch.spec.strategy), which every varied knob's values include.
GRID: dict[str, dict[str, Any]] = {
    "linear_probe": {"head_lr": [3e-3, 1e-2, 3e-2, 1e-1]},
    "partial": {
        "head_lr": [1e-3, 1e-2],
        "backbone_lr": [5e-5, 2e-4],
        "layer_decay": 0.75,
        "unfreeze_depth": [1, 2, 3],
    },
    "full": {"head_lr": [1e-3, 1e-2], "backbone_lr": [2e-5, 5e-5, 2e-4], "layer_decay": 0.75},
    "lora": {
        "head_lr": 1e-3,
        "lr": [3e-4, 1e-3, 3e-3],
        "rank": [4, 8],
        "alpha": 16.0,
        "dropout": 0.05,
        "targets": "attention",
    },
    "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16},
}
# The demo's space spanned (`--grid wide`): every learning rate at three or four values across the
# whole range the demo spec searches (tlsearch.spec.model's ranges, the preferred defaults among
# them), LoRA's targets varied as the spec varies them: 61 configurations, about an hour. GRID keeps
# each knob near its default, a narrower space than the one the demo actually searches.
WIDE_GRID: dict[str, dict[str, Any]] = {
    "linear_probe": {"head_lr": [3e-3, 1e-2, 3e-2, 1e-1]},
    "partial": {
        "head_lr": [1e-4, 1e-3, 1e-2],
        "backbone_lr": [1e-5, 5e-5, 2e-4, 1e-3],
        "layer_decay": 0.75,
        "unfreeze_depth": [1, 2, 3],
    },
    "full": {"head_lr": [1e-4, 1e-3, 1e-2], "backbone_lr": [5e-6, 5e-5, 5e-4], "layer_decay": 0.75},
    "lora": {
        "head_lr": 1e-3,
        "lr": [1e-4, 1e-3, 5e-3],
        "rank": [4, 8],
        "alpha": 16.0,
        "dropout": 0.05,
        "targets": ["attention", "attention_mlp"],
    },
    "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16},
}
# Seconds per 4-epoch demo trial on the 2-core CPU VM, two trials at once (the demo's measurements):
# what the expected duration is computed from.
DEMO_TRIAL_S = {"linear_probe": 30.0, "partial": 90.0, "full": 140.0, "lora": 115.0}
RAY_START_S = 60.0

# The vision example's grid (search_spaces/mnist_efficientnet_lite0.yaml, no LoRA: 22 configurations,
# about 15 min): a second table, another model, data set and metric, for the same replay.
VISION_SPEC = ROOT / "search_spaces" / "mnist_efficientnet_lite0.yaml"
VISION_GRID: dict[str, dict[str, Any]] = {
    "linear_probe": {"head_lr": [1e-3, 3e-3, 1e-2, 3e-2]},
    "partial": {
        "head_lr": [1e-3, 1e-2],
        "backbone_lr": [5e-5, 5e-4],
        "layer_decay": 0.75,
        "unfreeze_depth": [2, 4, 8],
    },
    "full": {"head_lr": [1e-3, 1e-2], "backbone_lr": [5e-5, 2e-4, 1e-3], "layer_decay": 0.75},
    "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 32},
}
GRIDS = {DEMO_SPEC.name: GRID, VISION_SPEC.name: VISION_GRID}
# Device-seconds per 4-epoch trial of the vision example (benchmarks/results/vision_search.json).
VISION_TRIAL_S = {"linear_probe": 36.0, "partial": 57.0, "full": 110.0}

QUICK_GRID: dict[str, dict[str, Any]] = {
    "linear_probe": {"head_lr": [1e-2, 1e-1]},
    "full": {"head_lr": 1e-2, "backbone_lr": [1e-4, 1e-3], "layer_decay": 0.75},
    "common": {"weight_decay": 0.01, "warmup_fraction": 0.1, "batch_size": 16},
}


def grid_configs(grid: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every configuration of `grid` as `search.seed_configs` entries, strategy by strategy."""
    configs = []
    for strategy, knobs in grid.items():
        if strategy == "common":
            continue
        varied = {k: v for k, v in {**knobs, **grid.get("common", {})}.items() if isinstance(v, list)}
        for values in itertools.product(*varied.values()):
            configs.append({"strategy": strategy, **dict(zip(varied, values, strict=True))})
    return configs


def expected_seconds(
    grid: dict[str, dict[str, Any]],
    max_epochs: int,
    concurrent: int,
    per_trial: dict[str, float] = DEMO_TRIAL_S,
) -> float:
    trial_s = sum(per_trial[c["strategy"]] * max_epochs / 4 for c in grid_configs(grid))
    return RAY_START_S + trial_s / concurrent


def recording_spec(base: dict[str, Any], grid: dict[str, dict[str, Any]], name: str, storage: str) -> Any:
    """`base` searching exactly `grid`, every configuration once, no early stopping, no W&B, and
    one checkpoint per trial (only the table is kept)."""
    from tlsearch.spec import validate_spec

    configs = grid_configs(grid)
    document = {**base, "name": name, "storage": storage, "strategies": grid}
    document["search"] = {
        **base.get("search", {}),
        "num_samples": len(configs),
        "seed_configs": configs,
        "scheduler": {"type": "fifo"},
        "baselines": [],  # the table records the grid's configurations only
    }
    document["training"] = {
        **base.get("training", {}),
        "checkpoints_to_keep": 2,
    }  # the fewest: best and latest
    document["audit"] = {"enabled": False}
    document["finalize"] = {"after_search": False}
    document["tracking"] = {**base.get("tracking", {}), "wandb": {"mode": "disabled"}}
    return validate_spec(document, source="learning-curves")


def quick_base(directory: Path) -> dict[str, Any]:
    """A spec document for a tiny BERT built from code and a tiny text data set (tlsearch.testing)."""
    from tlsearch.testing import make_tiny_bert, text_rows, write_parquet

    model = make_tiny_bert(directory / "tiny-bert")
    train = write_parquet(text_rows(48, seed=1), directory / "data" / "train.parquet")
    validation = write_parquet(text_rows(24, seed=2), directory / "data" / "validation.parquet")
    return {
        "model": {"source": "hf", "name": str(model), "task": "text-classification", "max_length": 16},
        "data": {"train": str(train), "validation": str(validation), "text_column": "text"},
        "search": {"max_epochs": 2, "metric": "val_f1_macro"},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
    }


def record(
    base: dict[str, Any], grid: dict[str, dict[str, Any]], out: Path, *, keep_run: bool = False
) -> Any:
    """Run the recording search, write the table to `out`, return (table, seconds, run directory)."""
    from benchmarks.replay import LearningCurves, curves_from_run
    from tlsearch.search.runner import run_search

    storage = tempfile.mkdtemp(prefix="tlsearch-curves-")
    spec = recording_spec(base, grid, f"learning-curves-{time.strftime('%Y%m%d-%H%M%S')}", storage)
    start = time.time()
    outcome = run_search(spec)
    seconds = time.time() - start
    curves = curves_from_run(outcome.run_dir)
    source = {
        "search": spec.name,
        "model": spec.model.name,
        "data": spec.data.builtin or spec.data.train,
        "max_epochs": spec.search.max_epochs,
        "cpus_per_worker": spec.resources.cpus_per_worker,
        "recorded_s": round(seconds, 1),
    }
    curves = LearningCurves(curves.rows, source)
    curves.write(out)
    if not keep_run:
        shutil.rmtree(storage, ignore_errors=True)
    return curves, seconds, outcome.run_dir


def synthetic_curves(grid: dict[str, dict[str, Any]], max_epochs: int, seed: int = 0) -> Any:
    """A made-up table over `grid` for development and tests: each configuration climbs towards its
    own final value; epochs cost what the demo's trials of its strategy cost per epoch, the first
    one plus a set-up. Nothing here is measured."""
    import math
    import random

    from benchmarks.replay import LearningCurves

    rng = random.Random(seed)
    common = {f"common/{k}": v for k, v in grid.get("common", {}).items() if not isinstance(v, list)}
    rows = []
    counters: dict[str, int] = {}
    for config in grid_configs(grid):
        strategy = config["strategy"]
        counters[strategy] = counters.get(strategy, 0) + 1
        knobs = {**{k: v for k, v in grid[strategy].items() if not isinstance(v, list)}, **config}
        flat = {f"{strategy}/{k}": v for k, v in knobs.items() if k != "strategy"} | common
        mean = {"linear_probe": 0.75, "partial": 0.9, "full": 0.88, "lora": 0.85}[strategy]
        final = min(0.97, mean + rng.gauss(0, 0.05))
        speed = rng.uniform(0.5, 2.0)
        epoch_device_s = DEMO_TRIAL_S[strategy] / 4 * rng.uniform(0.9, 1.1)
        device_s = 0.0
        for epoch in range(1, max_epochs + 1):
            value = final * (1 - math.exp(-speed * epoch)) + rng.gauss(0, 0.01)
            cost = epoch_device_s + (5.0 if epoch == 1 else 0.0)
            device_s += cost
            rows.append(
                {
                    "config_id": f"{strategy}-{counters[strategy]:02d}",
                    "strategy": strategy,
                    "epoch": epoch,
                    **flat,
                    "val_f1_macro": value,
                    "val_accuracy": value,
                    "val_loss": 1.0 - value,
                    "val_roc_auc": value,
                    "train_loss": 1.0 - value,
                    "epoch_s": epoch_device_s,
                    "epoch_wall_s": cost,
                    "epoch_device_s": cost,
                    "wall_s": device_s,
                    "device_s": device_s,
                }
            )
    return LearningCurves(tuple(rows), {"synthetic": True, "seed": seed})


def summary(curves: Any, metric: str) -> dict[str, Any]:
    """What the table holds: per strategy its configurations, best value and cost of a whole trial."""
    per_strategy: dict[str, Any] = {}
    for strategy in curves.strategies():
        rows = [r for r in curves.rows if r["strategy"] == strategy]
        last = [r for r in rows if r["epoch"] == curves.max_epochs]
        best = max(rows, key=lambda r: r[metric])
        per_strategy[strategy] = {
            "configs": len(last),
            f"best_{metric}": best[metric],
            "best_config_id": best["config_id"],
            "median_trial_device_s": round(sorted(r["device_s"] for r in last)[len(last) // 2], 1),
            "median_epoch_s": round(sorted(r["epoch_s"] for r in rows)[len(rows) // 2], 2),
        }
    best = max(curves.rows, key=lambda r: r[metric])
    return {
        "configs": len(curves.curves),
        "max_epochs": curves.max_epochs,
        "metric": metric,
        f"best_{metric}": best[metric],
        "best_config_id": best["config_id"],
        "within_half_point_of_best": sum(
            max(r[metric] for r in c) >= best[metric] - 0.005 for c in curves.curves.values()
        ),
        "total_device_s": round(sum(curves.full_cost()), 1),
        "per_strategy": per_strategy,
    }


def validation_samples(text: str) -> int | str:
    """`--validation-samples`: a count of at least 2 (what the spec allows) or `all`."""
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 2 or `all`, but got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tiny grid on a tiny model built from code")
    parser.add_argument(
        "--out", type=Path, help=f"the table (default {TABLE.relative_to(ROOT)}; --quick: a temp dir)"
    )
    parser.add_argument(
        "--spec",
        type=Path,
        default=DEMO_SPEC,
        help="the spec to record (its grid: " + ", ".join(GRIDS) + "; default the demo's)",
    )
    parser.add_argument(
        "--grid",
        choices=["default", "wide"],
        default="default",
        help="the demo spec's grid: `default` (28 configurations near the defaults) or `wide` "
        "(61 spanning the demo's whole space); other specs have one grid",
    )
    parser.add_argument("--keep-run", action="store_true", help="keep the recording search's run directory")
    parser.add_argument(
        "--validation-samples",
        type=validation_samples,
        default=None,
        help="validation articles to score each epoch on: a number or `all` (default: the demo's 128). "
        "128 articles score in steps of 0.8 points, coarser than search_efficiency's 0.5-point target",
    )
    parser.add_argument(
        "--name", help="the result file's name (default learning_curves, --quick learning_curves_quick)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the grid and the expected duration only"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tlsearch-curves-quick-")) if args.quick else None
    if not args.quick and args.spec.name not in GRIDS:
        parser.error(f"no grid for {args.spec.name}; known: {', '.join(GRIDS)}")
    if args.grid == "wide" and (args.quick or args.spec.name != DEMO_SPEC.name):
        parser.error(f"--grid wide spans the demo spec's space ({DEMO_SPEC.name}) and is not --quick")
    grid = QUICK_GRID if args.quick else WIDE_GRID if args.grid == "wide" else GRIDS[args.spec.name]
    base = quick_base(workdir) if workdir else yaml.safe_load(args.spec.read_text())
    if args.validation_samples is not None:
        count = None if args.validation_samples == "all" else args.validation_samples
        base["data"] = {**base["data"], "max_validation_samples": count}
    out = args.out or (workdir / "learning_curves.parquet" if workdir else TABLE)
    configs = grid_configs(grid)
    max_epochs = base["search"]["max_epochs"]
    concurrent = 2  # the demo's cpus_per_worker: 1 on a 2-core machine
    per_trial = VISION_TRIAL_S if grid is VISION_GRID else DEMO_TRIAL_S
    print(
        f"[learning_curves] {len(configs)} configurations × {max_epochs} epochs; expected about "
        f"{expected_seconds(grid, max_epochs, concurrent, per_trial) / 60:.0f} min on a 2-core CPU"
        + (" (the demo's trial times; the quick grid takes about a minute)" if args.quick else ""),
        flush=True,
    )
    if args.dry_run:
        print(yaml.safe_dump({"strategies": grid, "seed_configs": configs}, sort_keys=False))
        return
    measured_on = environment()  # the recording rewrites the table: the tree as it began
    curves, seconds, run_dir = record(base, grid, out, keep_run=args.keep_run)
    metric = base["search"].get("metric", "val_accuracy")
    figures = {
        "quick": args.quick,
        "table": str(out.resolve().relative_to(ROOT)) if out.resolve().is_relative_to(ROOT) else str(out),
        "wall_s": round(seconds, 1),
        "spec": None if args.quick else str(args.spec.resolve().relative_to(ROOT)),
        "grid": grid,
        "max_validation_samples": base["data"].get("max_validation_samples"),
        **summary(curves, metric),
    }
    command = "python benchmarks/learning_curves.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    name = args.name or ("learning_curves_quick" if args.quick else "learning_curves")
    print(write_result(name, figures, command.strip(), measured_on))
    print(f"[learning_curves] table: {out} ({len(curves.rows)} rows) in {seconds:.0f} s; run: {run_dir}")
    if workdir and not args.out:
        print(f"[learning_curves] quick table left in {workdir}")


if __name__ == "__main__":
    main()
