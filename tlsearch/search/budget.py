"""`search.time_budget_s`: the wall-clock seconds a search may take, over every session of it (the
first run and each `tlsearch resume`), from the session's start (the data audit and Ray's start-up
included) until its trials stop; the baselines and the final model come after.

Each session is bracketed in the event log (`search_session` ... `search_session_end`); a driver
killed mid-session left no end, and its session counts until the last record it wrote.

When the budget runs out, Tune stops every running trial without telling the searcher or the
callbacks (its `stop_all` path): the search's recorder ends them in the log (`ended_by:
time_budget`) and the runner closes their Optuna trials, so nothing stays `running`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Stopper

from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, abandoned_trials, append_jsonl, read_jsonl

SESSION_START = "search_session"
SESSION_END = "search_session_end"
BUDGET_SPENT = "time_budget_spent"
ENDED_BY_BUDGET = "time_budget"


def start_session(run_dir: Path) -> None:
    append_jsonl(run_dir / EVENTS_LOG, {"event": SESSION_START, "time": time.time()})


def end_session(run_dir: Path) -> None:
    append_jsonl(run_dir / EVENTS_LOG, {"event": SESSION_END, "time": time.time()})


def spent_s(run_dir: Path, *, now: float | None = None) -> float:
    """Seconds the search has taken so far, over every session in the log; the last session, when
    still open, until `now` (None: until its last record, as for a killed driver's)."""
    events = read_jsonl(run_dir / EVENTS_LOG)
    records = sorted(
        [(e["time"], e.get("event")) for e in events if "time" in e]
        + [(r["time"], None) for r in read_jsonl(run_dir / EPOCHS_LOG) if "time" in r]
    )
    spent, opened, last = 0.0, None, 0.0
    for when, event in records:
        if event == SESSION_START:
            if opened is not None:  # the previous session's driver was killed: it ran until `last`
                spent += max(0.0, last - opened)
            opened, last = when, when
        elif event == SESSION_END and opened is not None:
            spent += max(0.0, when - opened)
            opened = None
        elif opened is not None:
            last = when
    if opened is not None:
        spent += max(0.0, (last if now is None else now) - opened)
    return spent


def budget_spent(run_dir: Path) -> bool:
    return any(e.get("event") == BUDGET_SPENT for e in read_jsonl(run_dir / EVENTS_LOG))


def end_cut_trials(run_dir: Path) -> list[str]:
    """End in the log the trials the time budget stopped (started, never ended): they keep the epochs
    they reported, as a trial the scheduler stopped does. Returns their ids."""
    events = read_jsonl(run_dir / EVENTS_LOG)
    ended = {e["trial_id"] for e in events if e.get("event") == "end"}
    abandoned = abandoned_trials(run_dir)
    started = dict.fromkeys(e["trial_id"] for e in events if e.get("event") == "start")
    cut = [t for t in started if t not in ended and t not in abandoned]
    for trial_id in cut:
        append_jsonl(
            run_dir / EVENTS_LOG,
            {
                "event": "end",
                "time": time.time(),
                "trial_id": trial_id,
                "status": "ok",
                "ended_by": ENDED_BY_BUDGET,
            },
        )
    return cut


class TimeBudget(Stopper):
    """Stops the whole search once its budget is spent. Holds only the run directory and the budget
    (it is pickled into Tune's experiment state): after a restore it reads what earlier sessions
    spent from the log."""

    def __init__(self, run_dir: str, budget_s: float):
        self.run_dir, self.budget_s = run_dir, budget_s
        self._deadline: float | None = None
        self._spent = False

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_deadline": None, "_spent": False}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self._spent:
            return True
        if self._deadline is None:
            now = time.time()
            self._deadline = now + self.budget_s - spent_s(Path(self.run_dir), now=now)
        if time.time() < self._deadline:
            return False
        self._spent = True
        append_jsonl(
            Path(self.run_dir) / EVENTS_LOG,
            {"event": BUDGET_SPENT, "time": time.time(), "budget_s": self.budget_s},
        )
        print(f"[tlsearch] the search's time budget ({self.budget_s:g} s) is spent: trials stop", flush=True)
        return True
