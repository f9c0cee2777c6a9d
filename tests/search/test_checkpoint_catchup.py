"""A resumed trial continues from its newest recorded checkpoint, on Tune's own Trial objects, their
checkpoint manager and the state Tune saves and restores them from (the whole search:
tests/integration/test_search.py::test_driver_stopped_every_way_and_a_trial_killed_past_its_retries)."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
from pathlib import Path

import ray
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune import Checkpoint, CheckpointConfig, PlacementGroupFactory
from ray.tune.experiment import Trial

from tlsearch.results.files import EVENTS_LOG, append_jsonl
from tlsearch.search.checkpoint_catchup import (
    MANAGER_ATTRIBUTES,
    TRAINING_RESULT,
    ResumeFromNewestCheckpoint,
    catch_up,
    recorded_checkpoints,
)

RAY = f"ray {ray.__version__}"
CATCHUP = "tlsearch/search/checkpoint_catchup.py"


def test_tunes_checkpoint_manager_has_what_the_catch_up_reads(tmp_path: Path) -> None:
    manager = new_trial(tmp_path).run_metadata.checkpoint_manager
    for name, types in MANAGER_ATTRIBUTES.items():
        where = f"{RAY}: {type(manager).__name__}.{name}, which {CATCHUP} reads"
        assert hasattr(manager, name), f"{where}, is gone"
        assert isinstance(getattr(manager, name), types), f"{where}, is not one of {types}"
    module_name, class_name = TRAINING_RESULT
    result = getattr(importlib.import_module(module_name), class_name, None)
    assert result is not None, f"{RAY}: {module_name}.{class_name}, which {CATCHUP} registers, is gone"
    assert {"checkpoint", "metrics"} <= set(inspect.signature(result).parameters), (
        f"{RAY}: {class_name} takes no checkpoint and metrics ({CATCHUP})"
    )


def new_trial(storage_root: Path, trial_id: str = "a") -> Trial:
    storage = StorageContext(
        storage_path=str(storage_root), experiment_dir_name="search", trial_dir_name=f"trial_{trial_id}"
    )
    trial = Trial(
        "run_trial",
        trial_id=trial_id,
        stub=True,
        storage=storage,
        # The retention tlsearch asks for (checkpoints_to_keep 2): the best by score, and the latest.
        checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"
        ),
    )
    trial.placement_group_factory = PlacementGroupFactory(
        [{"CPU": 1}]
    )  # a stub has none; its state needs one
    trial.storage.current_checkpoint_index = 0  # the next checkpoint's directory: checkpoint_000000
    return trial


def report(trial: Trial, epoch: int, accuracy: float, *, recorded: bool = True) -> str:
    """What a search does with an epoch's checkpoint: the trial's actor writes it into the next
    checkpoint directory; the driver records it (a `checkpoint` event) and Tune registers it (its
    retention may delete an older one). recorded=False: the driver died before the report reached it."""
    path = trial.storage.checkpoint_fs_path
    Path(path).mkdir(parents=True)
    metrics = {"epoch": epoch, "val_accuracy": accuracy}
    (Path(path) / "meta.json").write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
    if recorded:
        events = Path(trial.storage.experiment_fs_path) / EVENTS_LOG
        append_jsonl(
            events, {"event": "checkpoint", "trial_id": trial.trial_id, "epoch": epoch, "path": path}
        )
        result = {**metrics, "training_iteration": epoch}
        trial.on_checkpoint(_TrainingResult(checkpoint=Checkpoint(path), metrics=result))
        trial.run_metadata.last_result = result
    else:
        trial.storage.current_checkpoint_index += 1
    return Path(path).name


def recorded(trial: Trial) -> list[str]:
    return recorded_checkpoints(Path(trial.storage.experiment_fs_path) / EVENTS_LOG).get(trial.trial_id, [])


def restored(saved: tuple[str, str]) -> Trial:
    """The trial as Tune restores it from its saved experiment state (TuneController._restore_trials)."""
    state, metadata = saved
    trial = Trial.from_json_state(state, stub=True)
    trial.restore_run_metadata(metadata)
    return trial


def on_disk(trial: Trial) -> list[str]:
    return sorted(p.name for p in Path(trial.storage.trial_fs_path).glob("checkpoint_*"))


def test_a_checkpoint_deleted_since_the_saved_state_gives_way_to_the_newest(tmp_path: Path) -> None:
    trial = new_trial(tmp_path)
    report(trial, 1, 0.3)
    saved = trial.get_json_state()  # the killed driver's last saved state
    report(trial, 2, 0.6)  # better: the retention deletes epoch 1's checkpoint
    assert on_disk(trial) == ["checkpoint_000001"]

    stale = restored(saved)
    assert stale.checkpoint is not None and Path(stale.checkpoint.path).name == "checkpoint_000000"
    assert catch_up(stale, recorded(stale)) == "checkpoint_000001"
    assert stale.checkpoint is not None and Path(stale.checkpoint.path).name == "checkpoint_000001"
    latest = stale.latest_checkpoint_result
    assert latest is not None and latest.metrics["training_iteration"] == 2  # Tune's iteration count goes on
    # Its next checkpoint goes after it, not into the directory that exists, and retention still works.
    assert report(stale, 3, 0.5) == "checkpoint_000002"
    assert on_disk(stale) == ["checkpoint_000001", "checkpoint_000002"]
    report(stale, 4, 0.4)
    assert on_disk(stale) == ["checkpoint_000001", "checkpoint_000003"]  # the best and the latest


def test_an_older_checkpoint_still_there_is_not_restored_from(tmp_path: Path) -> None:
    trial = new_trial(tmp_path)
    report(trial, 1, 0.6)
    saved = trial.get_json_state()
    report(trial, 2, 0.3)  # worse: epoch 1's stays as the best
    assert on_disk(trial) == ["checkpoint_000000", "checkpoint_000001"]
    stale = restored(saved)
    assert catch_up(stale, recorded(stale)) == "checkpoint_000001"  # rather than training epoch 2 again
    assert stale.checkpoint is not None and Path(stale.checkpoint.path).name == "checkpoint_000001"
    report(stale, 3, 0.2)
    assert on_disk(stale) == ["checkpoint_000000", "checkpoint_000002"]


def test_a_checkpoint_no_recorded_result_names_is_left_out(tmp_path: Path) -> None:
    trial = new_trial(tmp_path)
    report(trial, 1, 0.3)
    saved = trial.get_json_state()
    report(trial, 2, 0.6, recorded=False)  # its epoch never reached the results
    stale = restored(saved)
    assert catch_up(stale, recorded(stale)) is None
    assert stale.checkpoint is not None and Path(stale.checkpoint.path).name == "checkpoint_000000"


def test_with_every_checkpoint_gone_the_trial_starts_over(tmp_path: Path) -> None:
    trial = new_trial(tmp_path)
    report(trial, 1, 0.3)
    saved = trial.get_json_state()
    for path in Path(trial.storage.trial_fs_path).glob("checkpoint_*"):
        (path / "meta.json").unlink()
        path.rmdir()
    stale = restored(saved)
    assert catch_up(stale, recorded(stale)) is None
    assert stale.checkpoint is None  # Tune trains it from the start rather than failing its restore


def test_the_callback_catches_up_unfinished_trials_once_a_session(tmp_path: Path) -> None:
    trial = new_trial(tmp_path, "a")
    report(trial, 1, 0.3)
    saved = trial.get_json_state()
    report(trial, 2, 0.6)
    done = new_trial(tmp_path, "b")
    report(done, 1, 0.3)
    done_saved = done.get_json_state()
    report(done, 2, 0.6)
    stale, ended = restored(saved), restored(done_saved)
    ended.status = Trial.TERMINATED  # an ended trial is never restored: left as it is
    # One run directory (one events.jsonl) for both, as in a search.
    callback = ResumeFromNewestCheckpoint(str(tmp_path / "search"))
    callback.on_step_begin(0, [stale, ended])
    assert stale.checkpoint is not None and Path(stale.checkpoint.path).name == "checkpoint_000001"
    assert ended.checkpoint is not None and Path(ended.checkpoint.path).name == "checkpoint_000000"
    # Pickled into Tune's experiment state, it catches up again in the next session.
    assert callback.caught_up and not pickle.loads(pickle.dumps(callback)).caught_up
