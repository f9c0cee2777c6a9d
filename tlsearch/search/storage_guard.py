"""Stop a search before its storage fills up, the way Ctrl-C stops it, so `tlsearch resume` finishes it
once there is room again.

A full disk mid-search would otherwise fail each trial as it writes its next checkpoint (retried,
then `error` for good) and then the driver's own writes (tables, report) with a traceback. The guard
checks the free space of the run directory's file system after every result and checkpoint (one
statvfs call) and stops while there is still room for the driver to write its tables and report:
it keeps `SLACK_BYTES` plus a checkpoint per trial that can run at once, at the size of the largest
checkpoint seen. A trial that fails on a full disk all the same (another process filled it) stops
the search too. Stopping raises SIGINT in the driver: Tune ends the running trials, saves its
experiment state, and the resumed search continues them from their checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from ray.tune import Callback

SLACK_BYTES = 16 * 2**20  # the driver's tables, report and W&B files after the stop
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as it appears in a trial's error

# Why the last guard of this process stopped its search (None: it did not). Module state, not the
# guard's: a resumed search runs with the guard Tune unpickled from the experiment, not one of ours.
_stopped_because: str | None = None


def storage_full_reason() -> str | None:
    return _stopped_because


def reset() -> None:
    global _stopped_because
    _stopped_because = None


def directory_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # deleted as we walked (an older checkpoint Tune removed)
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
    return total


class StorageGuard(Callback):
    def __init__(self, run_dir: str, max_concurrent: int):
        self.run_dir = run_dir
        self.max_concurrent = max_concurrent
        self.largest_checkpoint = 0

    def needed_bytes(self) -> int:
        return SLACK_BYTES + self.max_concurrent * self.largest_checkpoint

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        path = result.get("checkpoint_path")  # a multi-worker trial's checkpoint arrives as a metric
        if isinstance(path, str) and "://" not in path and os.path.isdir(path):
            self.largest_checkpoint = max(self.largest_checkpoint, directory_bytes(path))
        self._check()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        path = getattr(checkpoint, "path", None)
        if isinstance(path, str) and "://" not in path and os.path.isdir(path):
            self.largest_checkpoint = max(self.largest_checkpoint, directory_bytes(path))
        self._check()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_error(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_error(trial)

    def _check(self) -> None:
        try:
            free = shutil.disk_usage(self.run_dir).free
        except OSError:
            return
        if free < self.needed_bytes():
            self._stop(
                f"{_mib(free)} free, and the search keeps {_mib(self.needed_bytes())} for its next "
                "checkpoints and its results"
            )

    def _check_error(self, trial: Any) -> None:
        path = getattr(trial, "error_file", None)
        try:
            text = Path(path).read_text() if path else ""
        except OSError:
            return
        if NO_SPACE in text:
            self._stop(f"a trial failed writing to it ({NO_SPACE})")

    def _stop(self, why: str) -> None:
        global _stopped_because
        if _stopped_because is None:
            _stopped_because = f"the storage of {self.run_dir} is full: {why}"
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: Tune saves its state and ends the trials


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"
