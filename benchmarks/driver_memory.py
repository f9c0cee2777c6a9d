"""The search driver's memory over a 500-trial replayed search (issue 26: growth < 200 MB).

    .venv/bin/python benchmarks/driver_memory.py                 # 500 trials, both variants
    .venv/bin/python benchmarks/driver_memory.py --quick         # 60 trials on a synthetic table

The learning-curve replay (benchmarks/replay.py): the demo spec's searcher and scheduler (TPE +
ASHA, built by tlsearch.search.runner.search_algorithms) with a trainable that reports a recorded
configuration's epochs instead of training, so 500 trials take minutes and what grows is the
driver's own state: Tune's trial objects and results, the Optuna study, the scheduler's rungs.
Two variants, each in a driver process of its own (a fresh interpreter: the second does not start
from the first one's heap):

- `tune`: Tune + Optuna alone, the study in memory;
- `as_search`: as a real search drives it, with tlsearch's ResultsRecorder (the run directory's
  tables rewritten as trials end; W&B off) and the study in a journal file in the run directory.

A Tune callback samples the driver's RSS and USS (psutil) every `--every` trials that end, and at
trials 1, 10, 100, 250 and 500. Reports both at those trials and the growth from trial 10 to the
last (`driver_rss_growth_500_trials_mb`: the larger of the two variants', in MB = 10^6 bytes).
Writes benchmarks/results/driver_memory.json (--quick: driver_memory_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, ray_runtime_env, write_result
from benchmarks.learning_curves import DEMO_SPEC, GRID, TABLE, synthetic_curves

VARIANTS = ("tune", "as_search")
MARKS = (1, 10, 100, 250, 500)
TARGET_MB = 200.0


class MemorySampler(Callback):
    """A Tune callback recording the driver's memory as trials end (Tune calls it in the driver)."""

    def __init__(self, every: int, marks: tuple[int, ...] = MARKS, trace: bool = False) -> None:
        self.every, self.marks, self.trace = every, marks, trace
        self.snapshot: Any = None  # tracemalloc's, at trial 10
        self.ended = 0
        self.started = time.perf_counter()
        self.samples: list[dict[str, Any]] = [self.sample()]

    def sample(self) -> dict[str, Any]:
        import psutil

        # A new Process each time: the Tuner pickles its callbacks, and a Process holds a lock.
        # USS reads /proc/<pid>/smaps (tens of milliseconds), hence every `every` trials only.
        full = psutil.Process().memory_full_info()
        return {
            "trials_ended": self.ended,
            "t_s": round(time.perf_counter() - self.started, 2),
            "rss_mb": round(full.rss / 1e6, 1),
            "uss_mb": round(full.uss / 1e6, 1),
        }

    def _ended(self) -> None:
        self.ended += 1
        if self.ended % self.every == 0 or self.ended in self.marks:
            self.samples.append(self.sample())
        if self.trace and self.ended == 10:
            import tracemalloc

            self.snapshot = tracemalloc.take_snapshot()

    def grown(self, top: int = 15) -> dict[str, Any]:
        """What Python allocated and still holds since trial 10, by file and by line."""
        import tracemalloc

        if self.snapshot is None:
            return {}
        now = tracemalloc.take_snapshot()
        out: dict[str, Any] = {"traced_growth_mb": 0.0}
        for key in ("filename", "lineno"):
            stats = now.compare_to(self.snapshot, key)
            out["traced_growth_mb"] = round(sum(s.size_diff for s in stats) / 1e6, 2)
            out[f"grown_by_{key}"] = [
                {"where": str(s.traceback[0]), "mb": round(s.size_diff / 1e6, 2), "blocks": s.count_diff}
                for s in stats[:top]
            ]
        return out

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended()


def measure(
    variant: str, trials: int, concurrent: int, every: int, table: Path | None, trace: bool = False
) -> dict[str, Any]:
    """One replayed search in this process (a fresh driver), on a local cluster of its own."""
    import tracemalloc

    import ray

    if trace:
        tracemalloc.start()

    from benchmarks.replay import LearningCurves, replay_spec, run_replay
    from tlsearch.results.study import make_storage
    from tlsearch.search.recorder import ResultsRecorder
    from tlsearch.spec.model import WandbSpec

    base = yaml.safe_load(DEMO_SPEC.read_text())
    curves = LearningCurves.read(table) if table else synthetic_curves(GRID, base["search"]["max_epochs"])
    # Repeats on: 500 trials from a table of 28 configurations (with `skip_duplicates` the search
    # would end once each had run).
    spec = replay_spec(base, curves, num_samples=trials, skip_duplicates=False)
    storage = tempfile.mkdtemp(prefix="tlsearch-driver-memory-")
    # address="local": a cluster of its own, never one another process started on this machine.
    ray.init(
        address="local",
        num_cpus=concurrent,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env=ray_runtime_env(),
    )
    try:
        sampler = MemorySampler(every, trace=trace)
        callbacks: list[Any] = [sampler]
        optuna_storage = None
        if variant == "as_search":
            run_dir = Path(storage) / "run"
            run_dir.mkdir()
            s = spec.search
            callbacks.append(
                ResultsRecorder(
                    str(run_dir), s.objectives, s.max_epochs, spec.name, WandbSpec(mode="disabled")
                )
            )
            optuna_storage = make_storage(None, run_dir)
        result = run_replay(
            spec,
            curves,
            max_concurrent=concurrent,
            storage_path=storage,
            callbacks=callbacks,
            optuna_storage=optuna_storage,
        )
        after = sampler.sample()
    finally:
        ray.shutdown()
    samples = sampler.samples
    at = {s["trials_ended"]: s for s in samples}
    first = at.get(10, samples[1] if len(samples) > 1 else samples[0])
    last = samples[-1]
    return {
        "variant": variant,
        "trials": result.trials,
        "errors": result.errors,
        "epochs_reported": len(result.events),
        "search_wall_s": round(result.wall_s, 1),
        "rss_mb_at": {str(n): at[n]["rss_mb"] for n in MARKS if n in at},
        "uss_mb_at": {str(n): at[n]["uss_mb"] for n in MARKS if n in at},
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
        "uss_growth_mb": round(last["uss_mb"] - first["uss_mb"], 1),
        "growth_from_trial": first["trials_ended"],
        "growth_to_trial": last["trials_ended"],
        "rss_mb_after_fit": after["rss_mb"],
        "samples": samples,
        **(sampler.grown() if trace else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="60 trials on a synthetic table")
    parser.add_argument("--trials", type=int, help="default 500 (--quick 60)")
    parser.add_argument("--concurrent", type=int, default=4, help="trials at once (logical CPUs)")
    parser.add_argument("--every", type=int, default=25, help="sample every N ended trials")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--table", type=Path, default=TABLE, help="learning-curve table")
    parser.add_argument("--name", help="result file name (default driver_memory[_quick])")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace Python allocations (slower, and RSS then includes the tracing): what grew "
        "between trial 10 and the end, by file and line (default name driver_memory_traced)",
    )
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant
    args = parser.parse_args()
    trials = args.trials or (60 if args.quick else 500)
    table = None if args.quick or not args.table.exists() else args.table

    if args.one:  # the child: one variant, its figures as JSON on the last line of stdout
        figures = measure(args.one, trials, args.concurrent, args.every, table, trace=args.tracemalloc)
        print(json.dumps(figures))
        return

    started = time.time()
    runs = {}
    for variant in args.variants:
        argv = [sys.executable, __file__, "--one", variant, "--trials", str(trials)]
        argv += ["--concurrent", str(args.concurrent), "--every", str(args.every)]
        argv += ["--quick"] if args.quick else ["--table", str(args.table)]
        argv += ["--tracemalloc"] if args.tracemalloc else []
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr[-4000:]}")
        runs[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = runs[variant]
        print(
            f"[driver_memory] {variant}: RSS {r['rss_mb_at']} MB, growth {r['rss_growth_mb']} MB "
            f"(USS {r['uss_growth_mb']}) over trials {r['growth_from_trial']}-{r['growth_to_trial']}, "
            f"{r['search_wall_s']} s"
        )
    growth = max(r["rss_growth_mb"] for r in runs.values())
    figures = {
        "quick": args.quick,
        "table": str(table.relative_to(ROOT)) if table else "synthetic (the demo's grid)",
        "trials": trials,
        "max_concurrent": args.concurrent,
        "sample_every": args.every,
        "target_mb": TARGET_MB,
        "driver_rss_growth_500_trials_mb": growth,
        "within_target": growth < TARGET_MB,
        "tracemalloc": args.tracemalloc,
        "runs": runs,
        "wall_s": round(time.time() - started, 1),
    }
    name = args.name or ("driver_memory_quick" if args.quick else "driver_memory")
    name += "_traced" if args.tracemalloc and args.name is None else ""
    command = "python benchmarks/driver_memory.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_result(name, figures, command.strip()))
    if not args.quick and args.name is None and not args.tracemalloc:
        from benchmarks.summary import refresh

        refresh()
    print(f"driver_rss_growth_500_trials_mb: {growth} (target < {TARGET_MB:.0f})")


if __name__ == "__main__":
    main()
