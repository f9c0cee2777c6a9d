"""A Tune callback on the driver that writes the results contract as trials report and finish, and
mirrors each trial to Weights & Biases."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tlsearch.results.files import (
    EPOCHS_LOG,
    EVENTS_LOG,
    METRICS,
    TRIAL_CONSTANTS,
    append_jsonl,
    checkpoint_location,
    checkpoint_uri,
    ended_trials,
    read_jsonl,
    trial_rows,
    write_tables,
)
from tlsearch.search.budget import budget_spent, end_cut_trials
from tlsearch.space.trial_config import flatten
from tlsearch.spec.model import WandbSpec
from tlsearch.spec.objective import Objective, primary
from tlsearch.tracking.wandb_runs import WandbTracker, runs_to_catch_up
from tlsearch.train.checkpoint import read_meta_at

EPOCH_FIELDS = (
    "epoch",
    *METRICS,
    "epoch_s",
    "train_samples_per_s",
    "val_rows",
    "wall_s",
    "device_s",
    "lr_head",
    "host_rss_gib",
    "checkpoint_save_s",
    "checkpoint_write_s",
    "strategy",
    "rank0_pid",
    *TRIAL_CONSTANTS,
)
# What a trial's W&B summary carries beyond its metrics (all taken from its trials.parquet row).
SUMMARY_FIELDS = ("status", "epochs", "trainable_params", "wall_s", "device_s", "node_id", "checkpoint")
# Rewriting the tables reads both logs whole, so its cost grows with the search: at most this share
# of the driver's time goes to it (a thousand short trials would otherwise spend most of theirs
# there, benchmarks/bookkeeping.py). The search's end always rewrites them.
REWRITE_SHARE = 0.05


class ResultsRecorder(Callback):
    """Holds only paths and settings, so it pickles into Tune's experiment state and works again
    after `Tuner.restore` (the JSONL logs carry everything recorded before the restore)."""

    def __init__(
        self,
        run_dir: str,
        objectives: Sequence[Objective],
        max_epochs: int,
        search: str,
        wandb: WandbSpec,
        checkpoint_root: str | None = None,
        time_budget: bool = False,
    ):
        self.run_dir = run_dir
        self.checkpoint_root = checkpoint_root  # `checkpoint_storage`: gives checkpoint paths their scheme
        self.objectives, self.max_epochs = tuple(objectives), max_epochs
        self.search, self.wandb = search, wandb
        self.time_budget = time_budget  # the search's recorder, under search.time_budget_s
        self._tracker: WandbTracker | None = None
        self._next_rewrite = 0.0  # time.monotonic() before which a finished trial skips the rewrite
        self._ended: frozenset[str] = frozenset()  # trials that had ended when this session began

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_tracker": None, "_next_rewrite": 0.0}

    @property
    def _dir(self) -> Path:
        return Path(self.run_dir)

    @property
    def tracker(self) -> WandbTracker:
        if self._tracker is None:
            self._tracker = WandbTracker(self._dir, self.search, self.wandb)
        return self._tracker

    def _event(self, record: dict[str, Any]) -> None:
        append_jsonl(self._dir / EVENTS_LOG, {"time": time.time(), **record})

    @property
    def _best(self) -> Objective:
        """What a trial's best epoch and the best trial are by, in the tables."""
        return primary(self.objectives)

    def rewrite(self) -> list[dict[str, Any]]:
        return write_tables(self._dir, self._best.metric, self._best.mode, self.max_epochs)

    def _rewrite_now_and_then(self) -> list[dict[str, Any]] | None:
        if time.monotonic() < self._next_rewrite:
            return None
        start = time.monotonic()
        rows = self.rewrite()
        self._next_rewrite = time.monotonic() + (time.monotonic() - start) / REWRITE_SHARE
        return rows

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        # A resumed search: Tune starts again the trials that ended after its last save of the
        # experiment state; they return at once (run_trial), and nothing of them is recorded twice.
        self._ended = ended_trials(self._dir)
        # Write again the W&B runs of trials that ended just before the old driver died, before
        # their run was finished.
        pending = set(runs_to_catch_up(self._dir))
        if not pending:
            return
        configs = {
            e["trial_id"]: e["config"] for e in read_jsonl(self._dir / EVENTS_LOG) if e["event"] == "start"
        }
        epochs = read_jsonl(self._dir / EPOCHS_LOG)
        for row in self.rewrite():
            if row["trial_id"] in pending:
                history = [r for r in epochs if r["trial_id"] == row["trial_id"]]
                self.tracker.start_trial(row["trial_id"], configs[row["trial_id"]], history)
                self._finish_run(row)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._ended:
            return
        config = flatten(trial.config)
        self._event({"event": "start", "trial_id": trial.trial_id, "config": config, "path": trial.path})
        if self.tracker.enabled:  # reading the whole log per trial only pays for a W&B run
            history = [r for r in read_jsonl(self._dir / EPOCHS_LOG) if r["trial_id"] == trial.trial_id]
            self.tracker.start_trial(trial.trial_id, config, history)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id in self._ended:
            return
        if "epoch" not in result:
            return
        row = {"trial_id": trial.trial_id, "time": time.time()}
        row.update({k: result.get(k) for k in EPOCH_FIELDS})
        if result.get("checkpoint_path"):  # Ray Train runner: the checkpoint arrives as a metric
            row["checkpoint"] = checkpoint_uri(result["checkpoint_path"], self.checkpoint_root)
        append_jsonl(self._dir / EPOCHS_LOG, row)
        self.tracker.log_epoch(trial.trial_id, row)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        if trial.trial_id in self._ended:
            return
        # In-actor runner: Tune persisted the checkpoint; its meta.json says which epoch it holds.
        # Through the checkpoint's own filesystem: it may be S3 or GCS.
        meta = read_meta_at(checkpoint.filesystem, checkpoint.path)
        if meta is None or "epoch" not in meta:
            return
        epoch = meta["epoch"]
        path = checkpoint_uri(checkpoint.path, self.checkpoint_root)
        self._event({"event": "checkpoint", "trial_id": trial.trial_id, "epoch": epoch, "path": path})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._ended:
            return
        self._event({"event": "retry", "trial_id": trial.trial_id, "error": _error_text(trial)})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._ended:
            return
        self._event({"event": "end", "trial_id": trial.trial_id, "status": "ok"})
        self._finish(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._ended:
            return
        self._event(
            {"event": "end", "trial_id": trial.trial_id, "status": "error", "error": _error_text(trial)}
        )
        self._finish(trial.trial_id)

    def _finish(self, trial_id: str) -> None:
        rows = self._rewrite_now_and_then()
        if not self.tracker.enabled:
            return
        if rows is None:
            rows = trial_rows(self._dir, self._best.metric, self._best.mode, self.max_epochs)
        row = next((t for t in rows if t["trial_id"] == trial_id), None)
        if row is not None:
            self._finish_run(row)

    def _finish_run(self, row: dict[str, Any]) -> None:
        trial_id = row["trial_id"]
        summary = {k: row.get(k) for k in SUMMARY_FIELDS}
        summary["stop_reason"] = summary.pop("status")
        summary.update(
            {k: row[k] for k in row if k in METRICS or (k.startswith("best_") and k[5:] in METRICS)}
        )
        checkpoint = checkpoint_location(self._dir, row["checkpoint"]) if row.get("checkpoint") else None
        self.tracker.end_trial(trial_id, summary, failed=row["status"] == "error", checkpoint=checkpoint)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Tune stops the trials running when the time budget runs out without a word to callbacks.
        cut = set(end_cut_trials(self._dir)) if self.time_budget and budget_spent(self._dir) else set()
        rows = self.rewrite()
        if self.tracker.enabled:
            for row in rows:
                if row["trial_id"] in cut:
                    self._finish_run(row)
        self.tracker.close()


def _error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()[-4000:]
    return None
