"""What every benchmark records beside its figures: git SHA, library versions, machine, date."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict[str, Any]:
    from tlsearch.search.resolve import versions

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                # Result files do not change what is measured: a tree dirty only there is clean.
                ["git", "status", "--porcelain", "--", ".", ":!benchmarks/results"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        sha, dirty = "unknown", True
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "memory_gib": _memory_gib(),
        },
        "versions": versions(),
    }


def ray_runtime_env() -> dict[str, Any]:
    """The `runtime_env` of a benchmark's ray.init. Ray workers unpickle a trainable of benchmarks/
    (benchmarks.replay.replay_trial) by importing it, and Ray gives them the driver's working
    directory, not its sys.path: with the repository on PYTHONPATH a script runs from any directory."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        return None


def write_result(
    name: str, figures: dict[str, Any], command: str, measured_on: dict[str, Any] | None = None
) -> Path:
    """`measured_on`: `environment()` as the benchmark began, for a benchmark that writes files of its
    own outside results/ (the learning-curve table) and would otherwise find the tree dirty."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"benchmark": name, "command": command, **(measured_on or environment()), **figures}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path
