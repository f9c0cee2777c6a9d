"""What a linear probe learns from each pooling of the demo's backbone, against scikit-learn's
LogisticRegression on the very same cached features (issue: "features that fit the backbone").

    .venv/bin/python benchmarks/pooling.py            # all-MiniLM-L6-v2 on BBC News (about 10 min on 2 cores)
    .venv/bin/python benchmarks/pooling.py --quick    # the demo's subsets (256 / 128 rows)

For `pooler` (the model's own BERT head: the untrained pooler over [CLS]), `cls` and `mean` (what the
model's sentence-transformers configuration says, so `auto`): one linear-probe trial of the training
loop in this process (LocalSession, no Ray) builds the feature cache and trains the head on it at the
demo's default head_lr (1e-2) and at 1e-1; then LogisticRegression (scikit-learn's defaults,
max_iter raised) is fitted on the cache's own training rows and scored on its validation rows. The
figure that matters: `gap` = the best probe's validation accuracy minus LogisticRegression's (target:
within 0.02). Writes benchmarks/results/pooling.json (pooling_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result

POOLINGS = ("pooler", "cls", "mean")
HEAD_LRS = (1e-2, 1e-1)


def spec_for(storage: Path, pooling: str, epochs: int, quick: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"builtin": "bbc-news"}
    if quick:
        data |= {"max_train_samples": 256, "max_validation_samples": 128}
    return {
        "name": f"pooling-{pooling}",
        "storage": str(storage),
        "model": {
            "source": "hf",
            "name": "builtin:all-minilm-l6-v2",
            "task": "text-classification",
            "max_length": 128,
            "pooling": pooling,
        },
        "data": data,
        "search": {"max_epochs": epochs},
        "training": {"eval_batch_size": 64},
    }


def cached_rows(run_dir: Path) -> tuple[Any, Any, Any, Any]:
    import numpy as np
    import pyarrow as pa

    (cache,) = [p for p in (run_dir / "features").iterdir() if p.is_dir() and p.name.startswith("head-")]
    tables = [
        pa.ipc.open_file(pa.memory_map(str(cache / f"{split}.arrow"))).read_all()
        for split in ("train", "validation")
    ]
    x = [np.asarray(t.column("features").to_pylist(), np.float32) for t in tables]
    y = [t.column("target").to_numpy() for t in tables]
    return x[0], y[0], x[1], y[1]


def measure(pooling: str, root: Path, epochs: int, quick: bool) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from tlsearch.testing import trial_config, trial_inputs
    from tlsearch.train.loop import train_trial
    from tlsearch.train.session import LocalSession

    run_dir = root / pooling
    spec = spec_for(root / "runs", pooling, epochs, quick)
    probes = {}
    for head_lr in HEAD_LRS:
        config = trial_config(
            "linear_probe", head_lr=head_lr, weight_decay=0.0, warmup_fraction=0.0, batch_size=16
        )
        session = LocalSession()
        started = time.perf_counter()
        train_trial(trial_inputs(spec, config, run_dir), session)
        last = session.reports[-1]
        probes[f"{head_lr:g}"] = {
            "val_accuracy": round(last["val_accuracy"], 4),
            "val_f1_macro": round(last["val_f1_macro"], 4),
            "feature_cache": last["feature_cache"],
            "seconds": round(time.perf_counter() - started, 1),
        }
    x_train, y_train, x_val, y_val = cached_rows(run_dir)
    started = time.perf_counter()
    reference = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    accuracy = float(reference.score(x_val, y_val))
    best = max(p["val_accuracy"] for p in probes.values())
    return {
        "rows": {"train": len(y_train), "validation": len(y_val)},
        "feature_width": int(x_train.shape[1]),
        "linear_probe": probes,
        "logistic_regression": {
            "val_accuracy": round(accuracy, 4),
            "seconds": round(time.perf_counter() - started, 1),
        },
        "gap": round(best - accuracy, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo's subsets of the data")
    parser.add_argument("--epochs", type=int, default=20, help="linear-probe epochs (cached: cheap)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        figures = {pooling: measure(pooling, Path(tmp), args.epochs, args.quick) for pooling in POOLINGS}
    for pooling, result in figures.items():
        probes = ", ".join(f"lr {lr}: {p['val_accuracy']:.3f}" for lr, p in result["linear_probe"].items())
        print(
            f"{pooling:>6}: linear probe {probes}; LogisticRegression "
            f"{result['logistic_regression']['val_accuracy']:.3f}; gap {result['gap']:+.3f}"
        )
    command = (
        "benchmarks/pooling.py"
        + (" --quick" if args.quick else "")
        + (f" --epochs {args.epochs}" if args.epochs != 20 else "")
    )
    path = write_result(
        "pooling_quick" if args.quick else "pooling",
        {
            "model": "builtin:all-minilm-l6-v2",
            "data": "bbc-news",
            "max_length": 128,
            "epochs": args.epochs,
            "head_lrs": list(HEAD_LRS),
            "poolings": figures,
            "seconds": round(time.perf_counter() - started, 1),
        },
        shlex.join([".venv/bin/python", *command.split()]),
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
