"""W&B runs written offline by the tracker, read back with wandb's own tool."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.wandb_read import history, run_info, run_summary
from tlsearch.spec.model import WandbSpec
from tlsearch.tracking.wandb_runs import WandbTracker, api_key_configured, resolve_mode, run_id, search_run_id


def test_run_ids_are_stable_valid_and_bounded() -> None:
    assert run_id("bbc-news", "5afe804c") == "bbc-news-5afe804c" == run_id("bbc-news", "5afe804c")
    assert run_id("a.b c", "t1") == "a_b_c-t1"
    long = run_id("x" * 100, "t1")
    assert len(long) <= 64 and long != run_id("x" * 99 + "y", "t1")
    assert search_run_id("s") == "s-search"


def test_mode_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not api_key_configured() and resolve_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / "netrc").chmod(0o600)
    assert api_key_configured() and resolve_mode("auto") == "online"  # `wandb login` wrote a netrc entry
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("online") == "offline"  # the environment wins over the spec


def test_trial_runs_offline_with_history_summary_and_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = WandbSpec(mode="offline", tags=("unit",))
    rows = [{"epoch": e, "val_accuracy": 0.5 + e / 10, "strategy": "lora", "node_id": "n"} for e in (1, 2, 3)]
    tracker = WandbTracker(tmp_path, "s", spec)
    tracker.start_trial("t1", {"strategy": "lora", "lora/rank": 8}, history=[])
    for row in rows[:2]:
        tracker.log_epoch("t1", row)
    tracker.log_epoch("t1", rows[1])  # a re-reported epoch: W&B steps only move forward
    tracker.close(exit_code=130)  # the driver stops mid-trial (Ctrl-C)
    time.sleep(1.1)  # offline directories are named by the second they start in

    # A resumed search: a new tracker replays the recorded epochs into a new offline directory.
    resumed = WandbTracker(tmp_path, "s", spec)
    resumed.start_trial("t1", {"strategy": "lora", "lora/rank": 8}, history=rows[:2])
    resumed.log_epoch("t1", rows[2])
    resumed.end_trial(
        "t1", {"stop_reason": "completed", "best_val_accuracy": 0.8}, failed=False, checkpoint=None
    )
    resumed.close()

    first, newest = sorted((tmp_path / "wandb").glob("offline-run-*-s-t1"))
    assert [h["epoch"] for h in history(first)] == [1, 2]
    assert run_summary(first)["exit_code"] == 130
    summary = run_summary(newest)
    assert [h["_step"] for h in history(newest)] == [1, 2, 3]  # the newest directory has it all
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["summary"]["stop_reason"] == "completed" and summary["summary"]["best_val_accuracy"] == 0.8
    assert summary["config"]["lora/rank"] == 8 and summary["config"]["trial_id"] == "t1"
    info = run_info(newest)
    assert (info["run_group"], info["job_type"], info["display_name"]) == ("s", "lora", "lora-t1")
    assert info["tags"] == ["unit"]


def test_disabled_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = WandbTracker(tmp_path, "s", WandbSpec(mode="disabled"))
    tracker.start_trial("t1", {"strategy": "full"}, history=[])
    tracker.close()
    assert not (tmp_path / "wandb").exists()


def test_runs_to_catch_up_after_a_killed_driver(tmp_path: Path) -> None:
    from tlsearch.results.files import EVENTS_LOG, append_jsonl
    from tlsearch.tracking.wandb_runs import PROGRESS_LOG, runs_to_catch_up

    for trial, ended in (("a", 10.0), ("b", 20.0), ("c", 30.0), ("gone", 40.0)):
        append_jsonl(tmp_path / EVENTS_LOG, {"event": "end", "trial_id": trial, "time": ended})
    append_jsonl(tmp_path / EVENTS_LOG, {"event": "abandoned", "trial_id": "gone"})
    append_jsonl(tmp_path / PROGRESS_LOG, {"trial_id": "a", "finished": 11.0})  # finished after it ended
    append_jsonl(tmp_path / PROGRESS_LOG, {"trial_id": "b", "finished": 12.0})  # before its last end
    assert runs_to_catch_up(tmp_path) == ["b", "c"]


def test_best_checkpoint_as_an_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.wandb_read import run_records

    monkeypatch.delenv("WANDB_MODE", raising=False)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    tracker = WandbTracker(tmp_path, "s", WandbSpec(mode="offline", log_checkpoints=True))
    tracker.start_trial("t1", {"strategy": "full"}, history=[])
    tracker.log_epoch("t1", {"epoch": 1, "val_accuracy": 0.5})
    tracker.end_trial("t1", {"stop_reason": "completed"}, failed=False, checkpoint=str(checkpoint))
    tracker.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*-s-t1")
    artifacts = [r["artifact"] for r in run_records(run) if r["type"] == "artifact"]
    assert artifacts and artifacts[0]["type"] == "model" and artifacts[0]["name"] == "s-t1-checkpoint"
    assert any(e["path"] == "model.safetensors" for e in artifacts[0]["manifest"]["contents"])
