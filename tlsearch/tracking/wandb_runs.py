"""Weights & Biases: one run per trial plus one for the search, written by the search's driver.

Why the driver and not the trials' rank-0 processes: the driver is the one process that sees every
trial from start to end, including how it ended (ASHA stops a trial by killing its processes, which
then cannot finish their run or say why they stopped). One writer per run, however many workers a
trial has, and the API key stays in the driver's own environment / netrc: it never travels through
Ray (Ray's WandbLoggerCallback copies it into actor environment variables, docs/design.md §21).

All W&B calls run on one background thread so Tune's event loop never waits for W&B.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import netrc
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tlsearch.results.files import EVENTS_LOG, abandoned_trials, append_jsonl, read_jsonl
from tlsearch.spec.model import WandbSpec

logger = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
# One line per finished trial run, written once W&B has finished it: after a driver is killed, the
# resumed search knows which ended trials still need their run written (see runs_to_catch_up).
PROGRESS_LOG = "wandb_progress.jsonl"
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def run_id(search: str, trial_id: str) -> str:
    """Stable across retries and `tlsearch resume`: a resumed trial continues the same run."""
    base = _NOT_ID.sub("_", f"{search}-{trial_id}")
    return base if len(base) <= 64 else f"{base[:55]}-{hashlib.sha1(base.encode()).hexdigest()[:8]}"


def search_run_id(search: str) -> str:
    return run_id(search, "search")


def api_key_configured() -> bool:
    """Is there a key wandb would use: WANDB_API_KEY, an identity token, or a `wandb login` netrc entry?"""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(spec_mode: str) -> str:
    """WANDB_MODE (when set) > the spec's mode > online if a key is configured, else offline."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("dryrun", "offline"):
        return "offline"
    if env in ("online", "run"):
        return "online"
    if env in ("disabled",):
        return "disabled"
    if spec_mode != "auto":
        return spec_mode
    return "online" if api_key_configured() else "offline"


class WandbTracker:
    """Opens, feeds and finishes W&B runs from the driver, in call order, on one background thread."""

    def __init__(self, run_dir: Path, search: str, spec: WandbSpec):
        self.run_dir, self.search, self.spec = Path(run_dir), search, spec
        self.mode = resolve_mode(spec.mode)
        self._runs: dict[str, Any] = {}  # trial id -> wandb Run
        self._last_step: dict[str, int] = {}
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    # --- public API: cheap, non-blocking --------------------------------------------------------

    def start_trial(self, trial_id: str, config: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """`history`: epochs already recorded for this trial (a resumed search replays them into a new
        offline run directory, so the newest directory of each run holds the whole history)."""
        self._submit(lambda: self._start(trial_id, config, history))

    def log_epoch(self, trial_id: str, row: dict[str, Any]) -> None:
        self._submit(lambda: self._log(trial_id, row))

    def end_trial(self, trial_id: str, summary: dict[str, Any], failed: bool, checkpoint: str | None) -> None:
        self._submit(lambda: self._end(trial_id, summary, failed, checkpoint))

    def log_search(
        self,
        config: dict[str, Any],
        summary: dict[str, Any],
        table: list[dict[str, Any]],
        images: dict[str, Path],
    ) -> None:
        self._submit(lambda: self._search(config, summary, table, images))

    def log_final(self, config: dict[str, Any], summary: dict[str, Any], images: dict[str, Path]) -> None:
        """The final model's run (job type `final`): its test metrics once, and its figures."""
        self._submit(lambda: self._final(config, summary, images))

    def close(self, exit_code: int = 0) -> None:
        """Wait for every queued call; finish runs still open (an interrupted search) with `exit_code`."""
        if self._thread is None:
            return
        self._submit(lambda: self._finish_open(exit_code))
        self._jobs.put(None)
        self._thread.join()
        self._thread = None

    # --- worker thread ------------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        if not self.enabled:
            return
        if self._thread is None:
            # Our own wandb-core, never one inherited from a parent process: a killed driver's
            # unfinished runs would stay open in a shared service, and the resumed search could not
            # reopen them ("run ID ... is in use").
            os.environ.pop("WANDB_SERVICE", None)
            self._thread = threading.Thread(target=self._work, name="tlsearch-wandb", daemon=True)
            self._thread.start()
            # A driver that exits early (Ctrl-C) still finishes what it queued.
            atexit.register(self.close, 130)
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # W&B trouble must never stop a search; the files on disk are the record
                logger.exception("W&B logging failed")

    def _init(self, run: str, name: str, job_type: str, config: dict[str, Any]) -> Any:
        import wandb

        return wandb.init(
            project=self.spec.project,
            entity=self.spec.entity,
            group=self.spec.group or self.search,
            job_type=job_type,
            name=name,
            id=run,
            resume="allow",
            tags=list(self.spec.tags),
            config=config,
            dir=str(self.run_dir),
            mode=self.mode,  # type: ignore[arg-type]  # checked by resolve_mode
            reinit="create_new",  # many runs open at once in this one process
            settings=wandb.Settings(
                console="off",  # the driver's console is not the trial's
                x_disable_stats=True,  # system metrics would describe the driver, not the trial
                silent=True,
                save_code=False,
                disable_git=True,
            ),
        )

    def _start(self, trial_id: str, config: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if trial_id in self._runs:
            return  # a retry in this driver: the run is still open
        strategy = config.get("strategy") or "trial"
        baseline = config.get("baseline")  # a baseline run outside the search (tlsearch.search.baselines)
        run = self._init(
            run_id(self.search, trial_id),
            f"baseline-{baseline}-{trial_id}" if baseline else f"{strategy}-{trial_id}",
            "baseline" if baseline else strategy,
            {**config, "trial_id": trial_id, "search": self.search},
        )
        self._runs[trial_id] = run
        self._last_step[trial_id] = 0
        if self.mode == "offline":
            for row in history:
                self._log(trial_id, row)

    def _log(self, trial_id: str, row: dict[str, Any]) -> None:
        run = self._runs.get(trial_id)
        epoch = int(row["epoch"])
        if run is None or epoch <= self._last_step[trial_id]:
            return  # W&B steps only move forward; a re-reported epoch keeps its first values there
        run.log(
            {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)},
            step=epoch,
        )
        self._last_step[trial_id] = epoch

    def _end(self, trial_id: str, summary: dict[str, Any], failed: bool, checkpoint: str | None) -> None:
        run = self._runs.pop(trial_id, None)
        if run is None:
            return
        run.summary.update(summary)
        remote = checkpoint is not None and "://" in checkpoint
        if self.spec.log_checkpoints and checkpoint is not None and (remote or Path(checkpoint).is_dir()):
            import wandb

            artifact = wandb.Artifact(f"{run.id}-checkpoint", type="model", metadata={"trial_id": trial_id})
            if remote:  # on S3/GCS: a reference to it, not a second copy
                artifact.add_reference(checkpoint)
            else:
                artifact.add_dir(checkpoint)
            run.log_artifact(artifact, aliases=["best"])
        run.finish(exit_code=1 if failed else 0)
        append_jsonl(self.run_dir / PROGRESS_LOG, {"trial_id": trial_id, "finished": time.time()})

    def _search(
        self,
        config: dict[str, Any],
        summary: dict[str, Any],
        table: list[dict[str, Any]],
        images: dict[str, Path],
    ) -> None:
        import wandb

        run = self._init(search_run_id(self.search), f"search-{self.search}", "search", config)
        columns = list(dict.fromkeys(k for row in table for k in row))
        leaderboard = wandb.Table(
            columns=[*columns],
            data=[[_cell(row.get(c)) for c in columns] for row in table],
        )
        run.log(
            {"leaderboard": leaderboard, **{name: wandb.Image(str(path)) for name, path in images.items()}}
        )
        run.summary.update(summary)
        run.finish()

    def _final(self, config: dict[str, Any], summary: dict[str, Any], images: dict[str, Path]) -> None:
        import wandb

        run = self._init(run_id(self.search, "final"), f"final-{self.search}", "final", config)
        run.log({name: wandb.Image(str(path)) for name, path in images.items()})
        run.summary.update(summary)
        run.finish()

    def _finish_open(self, exit_code: int) -> None:
        for trial_id in list(self._runs):
            self._runs.pop(trial_id).finish(exit_code=exit_code)


def runs_to_catch_up(run_dir: Path) -> list[str]:
    """Trials that ended (per the event log) after their W&B run was last finished: a driver killed
    right after a trial ended can lose the tail of its run. A resumed search writes them again."""
    finished: dict[str, float] = {}
    for record in read_jsonl(Path(run_dir) / PROGRESS_LOG):
        finished[record["trial_id"]] = max(finished.get(record["trial_id"], 0.0), record["finished"])
    ended: dict[str, float] = {}
    for event in read_jsonl(Path(run_dir) / EVENTS_LOG):
        if event.get("event") == "end":
            ended[event["trial_id"]] = event["time"]
    abandoned = abandoned_trials(Path(run_dir))
    return sorted(t for t, when in ended.items() if finished.get(t, 0.0) < when and t not in abandoned)


def _cell(value: Any) -> Any:
    # W&B tables want one type per column; None and numbers mix fine, nested values do not.
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)
