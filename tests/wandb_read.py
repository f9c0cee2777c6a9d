"""Read offline W&B runs back with wandb's own tool (`wandb leet inspect`), for the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

WANDB = str(Path(sys.executable).with_name("wandb"))


def run_summary(run_dir: Path) -> dict[str, Any]:
    """State, config, summary, name, job type... of one offline run directory."""
    out = subprocess.run(
        [WANDB, "leet", "inspect", str(run_dir), "--summary", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def run_records(run_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [WANDB, "leet", "inspect", str(run_dir), "--json"], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def run_info(run_dir: Path) -> dict[str, Any]:
    """The `run` record: group, job type, name, tags, initial config."""
    return next(r["run"] for r in run_records(run_dir) if r["type"] == "run")


def history(run_dir: Path) -> list[dict[str, Any]]:
    return [r["history"]["item"] for r in run_records(run_dir) if r["type"] == "history"]
