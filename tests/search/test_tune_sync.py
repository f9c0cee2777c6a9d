"""tlsearch's own files leave Tune's driver staging folder before Tune's first upload of a resumed
session (a whole search, which also checks that the list is complete: tests/integration/
test_search.py::test_driver_stopped_every_way_and_a_trial_killed_past_its_retries)."""

from __future__ import annotations

import pickle
from pathlib import Path

from tlsearch.search.tune_sync import OWN_SYNCED_FILES, OwnFilesOutOfTuneSync, remove_own_files


def test_only_tlsearchs_files_leave_the_staging_folder(tmp_path: Path) -> None:
    tune_files = (
        "experiment_state-2026-12-08_03-17-41.json",
        "searcher-state-2026-12-08_03-17-41.pkl",
        "tuner.pkl",
    )
    for name in (*OWN_SYNCED_FILES, *tune_files):
        (tmp_path / name).write_text("{}")
    assert remove_own_files(tmp_path) == list(OWN_SYNCED_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(tune_files)
    assert remove_own_files(tmp_path) == []  # none left: nothing to do


def test_it_removes_them_once_a_session() -> None:
    callback = OwnFilesOutOfTuneSync()
    callback.on_step_begin(0, [])
    assert callback.done
    callback.on_step_begin(1, [])  # later steps: nothing
    assert not pickle.loads(pickle.dumps(callback)).done
