"""A Tune callback on the driver that writes the results contract as trials report and finish."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tlsearch.results.files import (
    EPOCHS_LOG,
    EVENTS_LOG,
    METRICS,
    TRIAL_CONSTANTS,
    append_jsonl,
    write_tables,
)
from tlsearch.space.trial_config import flatten
from tlsearch.train.loop import META_FILE

EPOCH_FIELDS = (
    "epoch",
    *METRICS,
    "epoch_s",
    "train_samples_per_s",
    "wall_s",
    "device_s",
    "lr_head",
    "strategy",
    "rank0_pid",
    *TRIAL_CONSTANTS,
)


class ResultsRecorder(Callback):
    """Holds only paths and settings, so it pickles into Tune's experiment state and works again
    after `Tuner.restore` (the JSONL logs carry everything recorded before the restore)."""

    def __init__(self, run_dir: str, metric: str, mode: str, max_epochs: int):
        self.run_dir = run_dir
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs

    @property
    def _dir(self) -> Path:
        return Path(self.run_dir)

    def _event(self, record: dict[str, Any]) -> None:
        append_jsonl(self._dir / EVENTS_LOG, {"time": time.time(), **record})

    def rewrite(self) -> None:
        write_tables(self._dir, self.metric, self.mode, self.max_epochs)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(
            {
                "event": "start",
                "trial_id": trial.trial_id,
                "config": flatten(trial.config),
                "path": trial.path,
            }
        )

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" not in result:
            return
        row = {"trial_id": trial.trial_id, "time": time.time()}
        row.update({k: result.get(k) for k in EPOCH_FIELDS})
        if result.get("checkpoint_path"):  # Ray Train runner: the checkpoint arrives as a metric
            row["checkpoint"] = result["checkpoint_path"]
        append_jsonl(self._dir / EPOCHS_LOG, row)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # In-actor runner: Tune persisted the checkpoint; its meta.json says which epoch it holds.
        try:
            epoch = json.loads((Path(checkpoint.path) / META_FILE).read_text())["epoch"]
        except (OSError, KeyError, ValueError):
            return
        self._event(
            {"event": "checkpoint", "trial_id": trial.trial_id, "epoch": epoch, "path": checkpoint.path}
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event({"event": "retry", "trial_id": trial.trial_id, "error": _error_text(trial)})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event({"event": "end", "trial_id": trial.trial_id, "status": "ok"})
        self.rewrite()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(
            {"event": "end", "trial_id": trial.trial_id, "status": "error", "error": _error_text(trial)}
        )
        self.rewrite()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.rewrite()


def _error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()[-4000:]
    return None
