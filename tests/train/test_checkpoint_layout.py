"""Where a search keeps its checkpoints (CheckpointLayout), and how a promoted trial finds the one of
the trial it continues: in Tune's layout (single-worker trials) and Ray Train's (multi-worker
trials), by path or URI."""

from __future__ import annotations

import json
from pathlib import Path

from tlsearch.spec import validate_spec
from tlsearch.train.checkpoint import META_FILE, TRAIN_SNAPSHOT
from tlsearch.train.inputs import RunContext


def run_context(experiment: str, workers: int = 1) -> RunContext:
    spec = validate_spec(
        {
            "name": "s",
            "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
            "data": {"builtin": "bbc-news"},
            "resources": {"workers_per_trial": workers},
        }
    )
    return RunContext(experiment, spec, data=None, use_gpu=False, experiment_dir=experiment)  # type: ignore[arg-type]


def checkpoints(parent: Path, names_and_epochs: dict[str, int]) -> None:
    for name, epoch in names_and_epochs.items():
        (parent / name).mkdir(parents=True)
        (parent / name / META_FILE).write_text(json.dumps({"epoch": epoch}))


def test_tunes_layout_the_checkpoint_of_that_epoch(tmp_path: Path) -> None:
    trial = tmp_path / "trial_abc"
    # Tune numbers checkpoints in report order; a retried trial's numbers say nothing of epochs.
    checkpoints(trial, {"checkpoint_000000": 1, "checkpoint_000001": 2, "checkpoint_000002": 2})
    run = run_context(str(tmp_path))
    assert run.checkpoints.find("abc", 2) == f"{tmp_path}/trial_abc/checkpoint_000002"
    assert run.checkpoints.find("abc", 1) == f"{tmp_path}/trial_abc/checkpoint_000000"
    assert run.checkpoints.find("abc", 3) is None  # kept no more (checkpoints_to_keep)
    assert run.checkpoints.find("other", 1) is None


def test_ray_trains_layout_for_multi_worker_trials(tmp_path: Path) -> None:
    checkpoints(tmp_path / "train" / "s-abc", {"checkpoint_epoch_0001": 1, "checkpoint_epoch_0002": 2})
    (tmp_path / "train" / "s-abc" / "checkpoint_epoch_0003").mkdir()  # being written: no meta yet
    run = run_context(str(tmp_path), workers=2)
    assert run.checkpoints.find("abc", 2) == f"{tmp_path}/train/s-abc/checkpoint_epoch_0002"
    assert run.checkpoints.find("abc", 3) is None


def test_by_uri(tmp_path: Path) -> None:
    """checkpoint_storage as a URI (file:// here; s3:// and gs:// go the same way through pyarrow)."""
    checkpoints(tmp_path / "trial_abc", {"checkpoint_000000": 1})
    run = run_context(f"file://{tmp_path}")
    assert run.checkpoints.find("abc", 1) == f"file://{tmp_path}/trial_abc/checkpoint_000000"


def test_the_names_ray_and_tune_are_given(tmp_path: Path) -> None:
    layout = run_context(str(tmp_path), workers=2).checkpoints
    assert layout.train_run("abc") == (f"{tmp_path}/train", "s-abc")  # one Ray Train run per trial
    assert layout.trial_checkpoints("abc") == f"{tmp_path}/train/s-abc"
    assert layout.epoch_dirname(3) == "checkpoint_epoch_0003"
    single = run_context(str(tmp_path)).checkpoints
    assert single.trial_dirname("abc") == "trial_abc"
    assert single.trial_checkpoints("abc") == f"{tmp_path}/trial_abc"


def test_an_ended_trials_unreported_checkpoints_are_removed(tmp_path: Path) -> None:
    """A trial stopped at epoch 1 whose workers had already written epochs 2 and 3: those go, what Ray
    Train registered (its snapshot names it) stays whatever its epoch, and a second sweep finds nothing."""
    parent = tmp_path / "train" / "s-abc"
    checkpoints(parent, {f"checkpoint_epoch_000{e}": e for e in (1, 2, 3, 4)})
    snapshot = {
        "checkpoint_results": [
            {"checkpoint_dir_name": n} for n in ("checkpoint_epoch_0001", "checkpoint_epoch_0004")
        ]
    }
    (parent / TRAIN_SNAPSHOT).write_text(json.dumps(snapshot))
    layout = run_context(str(tmp_path), workers=2).checkpoints
    assert sorted(layout.remove_unreported("abc", 1)) == ["checkpoint_epoch_0002", "checkpoint_epoch_0003"]
    assert sorted(p.name for p in parent.iterdir()) == [
        "checkpoint_epoch_0001",
        "checkpoint_epoch_0004",
        TRAIN_SNAPSHOT,
    ]
    assert layout.remove_unreported("abc", 1) == []
    assert layout.remove_unreported("other", 0) == []  # no such trial: nothing to do


def test_the_snapshots_name_is_ray_trains() -> None:
    """Ray Train's name for its snapshot is internal to it: checked against the installed Ray."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    assert TRAIN_SNAPSHOT == CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


def test_without_a_snapshot_every_checkpoint_past_the_last_report_goes(tmp_path: Path) -> None:
    parent = tmp_path / "train" / "s-abc"
    checkpoints(parent, {"checkpoint_epoch_0001": 1, "checkpoint_epoch_0002": 2})
    layout = run_context(str(tmp_path), workers=2).checkpoints
    assert layout.remove_unreported("abc", 0) == ["checkpoint_epoch_0002", "checkpoint_epoch_0001"]
    assert not any(parent.iterdir())


def test_tunes_layout_is_left_to_tune(tmp_path: Path) -> None:
    checkpoints(tmp_path / "trial_abc", {"checkpoint_000000": 1, "checkpoint_000001": 2})
    assert run_context(str(tmp_path)).checkpoints.remove_unreported("abc", 0) == []
    assert len(list((tmp_path / "trial_abc").iterdir())) == 2
