"""The CPU benchmarks' quick modes at two commits, on the same machine, in one run: does a change that
should not change behaviour (a re-layout) leave the figures where they were?

    .venv/bin/python benchmarks/compare_commits.py --base 616d6fc [--head HEAD] [--rounds 2]

Each commit is checked out into a temporary git worktree and each benchmark runs there with this
virtual environment (`PYTHONPATH` puts the worktree's own tlsearch first), the two commits taking
turns benchmark by benchmark and round by round, so that a machine that slows down over the run
slows both alike. The figures compared (medians over the rounds):

- `trial_overhead.py --quick`: per-trial overhead, hand-off between trials, device-busy fraction;
- `feature_cache.py --quick`: the cached linear-probe epoch's speed-up;
- `throughput.py --quick`: tlsearch's loop against a plain PyTorch loop (samples/s ratio).

Writes benchmarks/results/compare_commits.json: each figure at both commits, head / base, and
whether it lies within ±10%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result

TOLERANCE = 0.10
# benchmark -> (arguments, result file, figures read from it)
BENCHMARKS: dict[str, tuple[list[str], str, list[str]]] = {
    "trial_overhead": (
        ["--quick"],
        "trial_overhead_quick.json",
        ["trial_overhead_s", "trial_handoff_s", "device_busy_fraction"],
    ),
    "feature_cache": (["--quick"], "feature_cache_quick.json", ["speedup"]),
    "throughput": (["--quick"], "throughput_quick.json", ["train_vs_plain_throughput"]),
}


def checkout(rev: str, into: Path) -> str:
    sha = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True)
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(into), rev], cwd=ROOT, capture_output=True, check=True
    )
    return sha.stdout.strip()


def run_benchmark(tree: Path, name: str) -> dict[str, Any]:
    arguments, result, figures = BENCHMARKS[name]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, f"benchmarks/{name}.py", *arguments]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} at {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    record = json.loads((tree / "benchmarks" / "results" / result).read_text())
    return {figure: record.get(figure) for figure in figures}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit before the change")
    parser.add_argument("--head", default="HEAD", help="the commit after it (default HEAD)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every benchmark at both commits")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks")
    parser.add_argument("--name", default="compare_commits", help="results/<name>.json")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    scratch = Path(tempfile.mkdtemp(prefix="tlsearch-compare-"))
    trees = {"base": scratch / "base", "head": scratch / "head"}
    try:
        shas = {side: checkout(getattr(args, side), tree) for side, tree in trees.items()}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"base": [], "head": []} for n in names}
        for round_ in range(args.rounds):
            for name in names:
                # Alternate which commit goes first, so neither always runs on a fresher machine.
                order = ("base", "head") if round_ % 2 == 0 else ("head", "base")
                for side in order:
                    print(f"[compare] round {round_ + 1}: {name} at {side} ({shas[side][:8]})", flush=True)
                    runs[name][side].append(run_benchmark(trees[side], name))
        figures: dict[str, Any] = {}
        for name in names:
            for figure in BENCHMARKS[name][2]:
                base = median([r[figure] for r in runs[name]["base"]])
                head = median([r[figure] for r in runs[name]["head"]])
                ratio = head / base if base and head is not None else None
                figures[f"{name}.{figure}"] = {
                    "base": base,
                    "head": head,
                    "head_over_base": round(ratio, 3) if ratio is not None else None,
                    "within_10_percent": ratio is not None and abs(ratio - 1) <= TOLERANCE,
                    "runs": {side: [r[figure] for r in runs[name][side]] for side in ("base", "head")},
                }
        summary = {
            "base_sha": shas["base"],
            "head_sha": shas["head"],
            "rounds": args.rounds,
            "figures": figures,
            "all_within_10_percent": all(f["within_10_percent"] for f in figures.values()),
        }
        command = "python benchmarks/compare_commits.py " + " ".join(sys.argv[1:])
        print(write_result(args.name, summary, command))
        for key, figure in figures.items():
            print(
                f"{key:45} base {figure['base']}  head {figure['head']}  head/base {figure['head_over_base']}"
            )
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
