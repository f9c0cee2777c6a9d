"""The chaos benchmark's killer picks only processes it may kill, and its comparison sees differences
(on run files written by hand: no Ray, no training)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.chaos import Killer, compare


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_killer_picks_only_live_checkpointed_unended_trials(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid is gone
    me = os.getpid()
    _write(
        tmp_path / "epochs.jsonl",
        [
            {"trial_id": "running", "epoch": 1, "rank0_pid": 1},
            {"trial_id": "running", "epoch": 2, "rank0_pid": me},  # its latest process counts
            {"trial_id": "no_checkpoint", "epoch": 1, "rank0_pid": me},
            {"trial_id": "ended", "epoch": 2, "rank0_pid": me},
            {"trial_id": "last_epoch", "epoch": 4, "rank0_pid": me},
            {"trial_id": "gone", "epoch": 1, "rank0_pid": dead.pid},
        ],
    )
    checkpoints = [
        {"event": "checkpoint", "trial_id": t, "epoch": 1} for t in ("running", "ended", "last_epoch", "gone")
    ]
    _write(tmp_path / "events.jsonl", [*checkpoints, {"event": "end", "trial_id": "ended", "status": "ok"}])
    killer = Killer(tmp_path, dead, kills=1, seed=0, max_epochs=4)
    assert killer.candidates() == [("running", me, 2)]
    killer.killed.add(me)  # once killed, never again (a zombie still answers signal 0)
    assert killer.candidates() == []


def _trial(trial_id: str, lr: float, losses: list[float], status: str = "completed") -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "status": status,
        "config": {"strategy": "full", "full/head_lr": lr},
        "best_val_accuracy": 0.5,
        "best_val_loss": min(losses),
        "best_val_f1_macro": 0.4,
        "epochs": len(losses),
        "epoch_metrics": [{"val_loss": v} for v in losses],
        "retries": 0,
        "reported": [(i + 1, 7) for i in range(len(losses))],
    }


def test_the_comparison_sees_configs_statuses_and_metrics_that_differ() -> None:
    clean = [_trial("a", 1e-3, [1.0, 0.9]), _trial("b", 1e-2, [1.1, 0.8])]
    same = compare([_trial("x", 1e-3, [1.0, 0.9]), _trial("y", 1e-2, [1.1, 0.8])], clean, epochs=2)
    assert same["same_configs_in_order"] and same["metrics_equal"]
    assert same["every_trial_completed_all_epochs"]
    assert same["max_abs_diff_epoch_metrics"] == 0.0

    retried = _trial("x", 1e-3, [1.0, 0.9]) | {"retries": 1, "reported": [(1, 7), (2, 8)]}
    assert compare([retried, clean[1]], clean, epochs=2)["per_trial"][0]["retry_first_epochs"] == [2]

    swapped = compare([_trial("x", 1e-2, [1.1, 0.8]), _trial("y", 1e-3, [1.0, 0.9])], clean, epochs=2)
    assert not swapped["same_configs_in_order"]
    off = compare([_trial("x", 1e-3, [1.0, 0.95]), _trial("y", 1e-2, [1.1, 0.8], "error")], clean, epochs=2)
    assert not off["metrics_equal"] and not off["every_trial_completed_all_epochs"]
    assert abs(off["max_abs_diff_epoch_metrics"] - 0.05) < 1e-9
    assert not compare(clean[:1], clean, epochs=2)["same_configs_in_order"]
