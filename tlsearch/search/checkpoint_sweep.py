"""Deletes the checkpoints an ended multi-worker trial wrote that Tune never saw, so that no trial
keeps more than `training.checkpoints_to_keep` (tlsearch.train.checkpoint.CheckpointLayout.remove_unreported
says where they come from).

A stopped trial's workers go on until its trial actor is gone, and a worker mid-epoch may still
write one more: an ended trial is swept when it ends, again every `SWEEP_EVERY_S` while it is
recent, and once more when the search ends.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from tlsearch.train.checkpoint import CheckpointLayout

SWEEP_EVERY_S = 5.0
# How long after its end a trial's workers may still write: Tune stops the trial actor at once, and
# Ray kills the workers an actor owns when it dies.
RECENT_S = 120.0


class UnreportedCheckpointSweep(Callback):
    def __init__(self, layout: CheckpointLayout):
        self.layout = layout
        self.ended: dict[str, tuple[float, int]] = {}  # trial id -> (when it ended, its last epoch)
        self.last_sweep = 0.0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_sweep < SWEEP_EVERY_S:
            return
        self.last_sweep = now
        for trial_id, (ended_at, last_epoch) in list(self.ended.items()):
            self.layout.remove_unreported(trial_id, last_epoch)
            if now - ended_at > RECENT_S:
                del self.ended[trial_id]

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # the ended ones of this session and of the sessions before it
            if trial.status in ("TERMINATED", "ERROR"):
                self.layout.remove_unreported(trial.trial_id, _last_epoch(trial))
        self.ended.clear()

    def _ended(self, trial: Any) -> None:
        last_epoch = _last_epoch(trial)
        self.layout.remove_unreported(trial.trial_id, last_epoch)
        self.ended[trial.trial_id] = (time.monotonic(), last_epoch)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; monotonic times mean nothing to the
        # process that restores it, which sweeps every ended trial at its end anyway.
        return {"layout": self.layout, "ended": {}, "last_sweep": 0.0}


def _last_epoch(trial: Any) -> int:
    epoch = (trial.last_result or {}).get("epoch")
    return int(epoch) if isinstance(epoch, int | float) else 0
