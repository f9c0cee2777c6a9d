"""Keeps Tune's experiment sync off tlsearch's own files.

The run directory is Tune's experiment directory. A resumed Tune copies every .json and .pkl at its
top into the driver's staging folder (to restore its own state from them), and from then on uploads
that folder back at each experiment checkpoint: tlsearch's audit.json, best.json and report.json
would be put back as they were when the session started, and a driver killed during an upload
leaves the file it was copying cut short (an empty audit.json). At a resumed session's first step,
before Tune's first upload, their staging copies are removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from tlsearch.audit import AUDIT_FILE
from tlsearch.results.files import BEST_FILE, REPORT_SUMMARY

# tlsearch's files at the top of a run directory that Tune's sync-down takes (*.json, *.pkl).
OWN_SYNCED_FILES = (AUDIT_FILE, BEST_FILE, REPORT_SUMMARY)


class OwnFilesOutOfTuneSync(Callback):
    def __init__(self) -> None:
        self.done = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.done:
            return
        self.done = True
        if trials:  # one staging folder for the experiment, which every trial's storage names
            remove_own_files(Path(trials[0].storage.experiment_driver_staging_path))

    def __getstate__(self) -> dict[str, Any]:
        return {"done": False}  # pickled into Tune's state: a resumed session removes them again


def remove_own_files(staging: Path) -> list[str]:
    """Removes tlsearch's files from Tune's driver staging folder; returns the names removed."""
    removed = []
    for name in OWN_SYNCED_FILES:
        try:
            (staging / name).unlink()
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed
