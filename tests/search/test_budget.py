"""search.time_budget_s: what earlier sessions spent, the stopper's deadline, and the trials it cut."""

from __future__ import annotations

import time
from pathlib import Path

from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, append_jsonl, read_jsonl, trial_rows
from tlsearch.search.budget import (
    BUDGET_SPENT,
    SESSION_END,
    SESSION_START,
    TimeBudget,
    end_cut_trials,
    spent_s,
)


def _event(run_dir: Path, when: float, event: str, **fields: object) -> None:
    append_jsonl(run_dir / EVENTS_LOG, {"event": event, "time": when, **fields})


def test_spent_counts_each_session_and_a_killed_one_until_its_last_record(tmp_path: Path) -> None:
    _event(tmp_path, 100.0, SESSION_START)
    _event(tmp_path, 130.0, SESSION_END)  # 30 s
    _event(tmp_path, 140.0, "start", trial_id="b", config={})  # between sessions (baselines): not counted
    _event(tmp_path, 200.0, SESSION_START)
    append_jsonl(tmp_path / EPOCHS_LOG, {"trial_id": "a", "epoch": 1, "time": 212.0})
    _event(tmp_path, 300.0, SESSION_START)  # the driver before was killed after its record at 212: 12 s
    _event(tmp_path, 305.0, "checkpoint", trial_id="a", epoch=2)  # the current session: 5 s so far
    assert spent_s(tmp_path) == 30.0 + 12.0 + 5.0
    assert spent_s(tmp_path, now=320.0) == 30.0 + 12.0 + 20.0  # the open session, until now


def test_the_stopper_keeps_what_earlier_sessions_spent_and_logs_once(tmp_path: Path) -> None:
    now = time.time()
    _event(tmp_path, now - 100.0, SESSION_START)
    _event(tmp_path, now - 60.0, SESSION_END)  # 40 s spent before
    _event(tmp_path, now - 10.0, SESSION_START)  # this session began 10 s ago (the audit, Ray's start)
    assert not TimeBudget(str(tmp_path), 60.0).stop_all()
    spent = TimeBudget(str(tmp_path), 49.0)
    assert spent.stop_all() and spent.stop_all()
    assert sum(e["event"] == BUDGET_SPENT for e in read_jsonl(tmp_path / EVENTS_LOG)) == 1


def test_cut_trials_end_with_their_epochs_and_the_reason(tmp_path: Path) -> None:
    _event(tmp_path, 1.0, "start", trial_id="done", config={"strategy": "full"})
    _event(tmp_path, 1.0, "start", trial_id="cut", config={"strategy": "full"})
    for trial_id, epochs in (("done", 3), ("cut", 1)):
        for epoch in range(1, epochs + 1):
            append_jsonl(
                tmp_path / EPOCHS_LOG, {"trial_id": trial_id, "epoch": epoch, "val_loss": 1.0 / epoch}
            )
    _event(tmp_path, 2.0, "end", trial_id="done", status="ok")
    assert end_cut_trials(tmp_path) == ["cut"]
    assert end_cut_trials(tmp_path) == []  # once
    rows = {r["trial_id"]: r for r in trial_rows(tmp_path, "val_loss", "min", max_epochs=3)}
    assert (rows["done"]["status"], rows["done"]["ended_by"]) == ("completed", None)
    assert (rows["cut"]["status"], rows["cut"]["ended_by"], rows["cut"]["epochs"]) == (
        "stopped_early",
        "time_budget",
        1,
    )
