"""The driver's results recorder: what it costs per trial stays flat as a search grows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from tlsearch.results.files import EPOCHS_LOG, TRIALS_TABLE, read_jsonl
from tlsearch.search.recorder import ResultsRecorder
from tlsearch.spec.model import WandbSpec
from tlsearch.spec.objective import Objective

CONFIG = {"strategy": "linear_probe", "linear_probe": {"head_lr": 0.01}}
OBJECTIVES = (Objective("val_f1_macro", "max"),)


def finish(recorder: ResultsRecorder, trial_id: str) -> None:
    storage = StorageContext(recorder.run_dir, "tune", trial_dir_name=f"trial_{trial_id}")
    trial = Trial("replay", stub=True, trial_id=trial_id, config=CONFIG, storage=storage)
    recorder.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        recorder.on_trial_result(0, [], trial, {"epoch": epoch, "val_f1_macro": 0.5, "device_s": 1.0 * epoch})
    recorder.on_trial_complete(0, [], trial)


def rows(run_dir: Path) -> int:
    return pq.read_table(run_dir / TRIALS_TABLE).num_rows


def test_tables_are_rewritten_now_and_then_and_always_at_the_end(tmp_path: Path) -> None:
    recorder = ResultsRecorder(str(tmp_path), OBJECTIVES, 2, "s", WandbSpec(mode="disabled"))
    rewrites = []
    rewrite = recorder.rewrite
    recorder.rewrite = lambda: rewrites.append(1) or rewrite()  # type: ignore[method-assign]
    finish(recorder, "t00")
    assert rows(tmp_path) == 1  # the first finished trial is on disk at once
    for i in range(1, 40):
        finish(recorder, f"t{i:02d}")
    # Trials finishing faster than a rewrite's cost allows skip it: no rewrite per trial (counted: the
    # last finish may happen to fall on one, so the table's rows alone do not tell).
    assert len(rewrites) < 40
    assert len(read_jsonl(tmp_path / EPOCHS_LOG)) == 80  # while the logs hold every epoch
    recorder.on_experiment_end([])
    assert rows(tmp_path) == 40
    finished = pq.read_table(tmp_path / TRIALS_TABLE).to_pylist()
    assert {t["status"] for t in finished} == {"completed"} and finished[0]["best_val_f1_macro"] == 0.5
