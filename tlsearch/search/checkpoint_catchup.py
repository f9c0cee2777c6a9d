"""A resumed search's trials continue from their newest checkpoint, not from the one Tune's saved
experiment state names.

Tune saves its experiment state every few seconds. A driver killed between two saves leaves a state
that names each trial's latest checkpoint as of the last save; since then the trial may have written
newer ones, and the retention (`training.checkpoints_to_keep`) may have deleted the one named. Tune
would then restore from a checkpoint that is gone ("does not exist on storage anymore": the trial
fails its retries and ends `error`), or from an older one (epochs trained twice, into checkpoint
directories that already exist). Before a resumed session starts any trial, each unfinished trial's
checkpoint manager is brought up to date with the newest checkpoint the search recorded for it (a
`checkpoint` event in events.jsonl, written as Tune registered it): it is registered with the metrics
saved beside it, and the trial numbers its next checkpoint after it. A checkpoint no event names (the
driver died before the report reached it) is left out: the search never recorded its epoch.

Single-worker trials only: a multi-worker trial's checkpoints are Ray Train's, which keeps its own
record of them (tlsearch.train.checkpoint.TRAIN_SNAPSHOT), and Tune's manager holds none of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tlsearch.results.files import EVENTS_LOG, read_jsonl
from tlsearch.train.checkpoint import read_meta_at

# Ray's private names used here, checked against the installed Ray by
# tests/search/test_checkpoint_catchup.py (an upgrade that changes one fails there, by name): Tune's
# checkpoint manager has no public way to forget a checkpoint, and it registers Ray's _TrainingResult.
MANAGER_ATTRIBUTES: dict[str, tuple[type, ...]] = {
    "_checkpoint_results": (list,),  # the kept checkpoints, by ascending score
    "_latest_checkpoint_result": (object,),  # None or the latest registered, kept whatever its score
}
TRAINING_RESULT = ("ray.train._internal.session", "_TrainingResult")  # (module, class): checkpoint, metrics
# Tune's checkpoint directories: checkpoint_000000, checkpoint_000001, ... (never Ray Train's)
TUNE_CHECKPOINT = re.compile(r"checkpoint_(\d+)")


class ResumeFromNewestCheckpoint(Callback):
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.caught_up = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # The first step of a session: the restored trials are queued, and none has an actor yet
        # (Tune hands a trial's storage, with its checkpoint index, to the actor it starts).
        if self.caught_up:
            return
        self.caught_up = True
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        if not unfinished:
            return
        recorded = recorded_checkpoints(Path(self.run_dir) / EVENTS_LOG)
        for trial in unfinished:
            catch_up(trial, recorded.get(trial.trial_id, []))

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into Tune's state: a resumed session catches up again.
        return {"run_dir": self.run_dir, "caught_up": False}


def catch_up(trial: Any, recorded: list[str]) -> str | None:
    """Registers the newest of `trial`'s recorded checkpoints (directory names, oldest first) that its
    checkpoint manager does not know and storage holds, after dropping the ones that are gone;
    returns its name, or None when the manager was up to date."""
    import importlib

    from ray.tune import Checkpoint

    module_name, class_name = TRAINING_RESULT
    training_result = getattr(importlib.import_module(module_name), class_name)

    storage = trial.storage
    filesystem, trial_path = storage.storage_filesystem, storage.trial_fs_path
    manager = trial.run_metadata.checkpoint_manager
    # MANAGER_ATTRIBUTES: what the manager keeps, with no public way to forget a checkpoint.
    gone = [r for r in manager._checkpoint_results if not _exists(filesystem, r.checkpoint.path)]
    manager._checkpoint_results = [r for r in manager._checkpoint_results if r not in gone]
    latest = manager.latest_checkpoint_result
    dropped = latest is not None and not _exists(filesystem, latest.checkpoint.path)
    if dropped:
        manager._latest_checkpoint_result = None
        latest = None
    known = Path(latest.checkpoint.path).name if latest is not None else ""
    newest = None
    for name in reversed(recorded):
        if name <= known:  # zero-padded: names sort as their indices
            break
        meta = read_meta_at(filesystem, f"{trial_path}/{name}")
        if meta is not None and isinstance(meta.get("epoch"), int):
            newest = (name, meta)
            break
    if newest is not None:
        name, meta = newest
        metrics = {**meta.get("metrics", {}), "epoch": meta["epoch"]}
        metrics["training_iteration"] = _iteration(trial.run_metadata.last_result, meta["epoch"])
        manager.register_checkpoint(
            training_result(checkpoint=Checkpoint(f"{trial_path}/{name}", filesystem), metrics=metrics)
        )
        storage.current_checkpoint_index = int(name.removeprefix("checkpoint_")) + 1
        print(
            f"[tlsearch] trial {trial.trial_id} continues from its epoch {meta['epoch']} ({name}), "
            "newer than the killed driver's saved state",
            flush=True,
        )
    if newest is not None or gone or dropped:  # what Tune saves of the trial next time
        trial.invalidate_json_state()
        trial.run_metadata.invalidate_cache()
    return newest[0] if newest is not None else None


def _iteration(last_result: dict[str, Any] | None, epoch: int) -> int:
    """Tune's training_iteration at the report of `epoch`: one report an epoch since the last result
    the saved state has (a trial that continues another's checkpoint reports its first epoch twice)."""
    last_result = last_result or {}
    if isinstance(last_result.get("training_iteration"), int) and isinstance(last_result.get("epoch"), int):
        return int(last_result["training_iteration"] + epoch - last_result["epoch"])
    return epoch


def recorded_checkpoints(events_log: Path) -> dict[str, list[str]]:
    """Each trial's checkpoint directory names, oldest first, from the search's `checkpoint` events."""
    recorded: dict[str, list[str]] = {}
    for event in read_jsonl(events_log):
        if event.get("event") == "checkpoint" and isinstance(event.get("path"), str):
            name = event["path"].rstrip("/").rsplit("/", 1)[-1]
            if TUNE_CHECKPOINT.fullmatch(name):
                recorded.setdefault(event["trial_id"], []).append(name)
    return recorded


def _exists(filesystem: Any, path: str) -> bool:
    import pyarrow.fs

    try:
        return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except OSError:
        return False
