"""The sweep of checkpoints an ended multi-worker trial wrote past Tune's last result, on Tune's own
Trial objects (the Ray Train side: tests/integration/test_search.py::test_multi_worker_search_with_asha)."""

from __future__ import annotations

import pickle
from pathlib import Path

from ray.tune.experiment import Trial

from tests.train.test_checkpoint_layout import checkpoints, run_context
from tlsearch.search.checkpoint_sweep import UnreportedCheckpointSweep


def trial(trial_id: str, last_epoch: int | None, status: str = Trial.TERMINATED) -> Trial:
    t = Trial("run_trial", trial_id=trial_id, stub=True)
    if last_epoch is not None:
        t.run_metadata.last_result = {"epoch": last_epoch}
    t.status = status
    return t


def test_a_trial_is_swept_when_it_ends_and_every_ended_one_at_the_end(tmp_path: Path) -> None:
    for trial_id in ("a", "b", "c"):
        checkpoints(tmp_path / "train" / f"s-{trial_id}", {f"checkpoint_epoch_000{e}": e for e in (1, 2, 3)})
    sweep = UnreportedCheckpointSweep(run_context(str(tmp_path), workers=2).checkpoints)
    a, b, c = trial("a", 1), trial("b", 2, Trial.ERROR), trial("c", 1, Trial.RUNNING)
    sweep.on_trial_complete(0, [a, b, c], a)
    assert sorted(p.name for p in (tmp_path / "train/s-a").iterdir()) == ["checkpoint_epoch_0001"]
    # A worker still alive writes one more after the trial ended: the next sweep takes it.
    checkpoints(tmp_path / "train/s-a", {"checkpoint_epoch_0004": 4})
    sweep.on_experiment_end([a, b, c])
    assert sorted(p.name for p in (tmp_path / "train/s-a").iterdir()) == ["checkpoint_epoch_0001"]
    assert len(list((tmp_path / "train/s-b").iterdir())) == 2  # error: past its last result, gone too
    assert len(list((tmp_path / "train/s-c").iterdir())) == 3  # still running (an interrupted search)


def test_it_pickles_into_tunes_experiment_state_without_its_clock(tmp_path: Path) -> None:
    sweep = UnreportedCheckpointSweep(run_context(str(tmp_path), workers=2).checkpoints)
    sweep.on_trial_complete(0, [], trial("a", 1))
    assert sweep.ended
    restored = pickle.loads(pickle.dumps(sweep))
    assert restored.layout == sweep.layout and not restored.ended
    assert restored.last_sweep == 0.0
