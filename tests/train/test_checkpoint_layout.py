"""Where a search keeps its checkpoints (CheckpointLayout), and how a promoted trial finds the one of
the trial it continues: in Tune's layout (single-worker trials) and Ray Train's (multi-worker
trials), by path or URI."""

from __future__ import annotations

import json
from pathlib import Path

from tlsearch.spec import validate_spec
from tlsearch.train.checkpoint import META_FILE
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
