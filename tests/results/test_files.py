"""The results contract, built from the JSONL logs the driver appends."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow.parquet as pq

from tlsearch.results.files import (
    BEST_FILE,
    EPOCHS_LOG,
    EPOCHS_TABLE,
    EVENTS_LOG,
    TRIALS_TABLE,
    append_jsonl,
    checkpoint_exists,
    checkpoint_uri,
    read_jsonl,
    read_trials,
    write_tables,
)


def epoch(trial: str, n: int, f1: float, **extra: object) -> dict:
    return {
        "trial_id": trial,
        "epoch": n,
        "strategy": "full",
        "val_f1_macro": f1,
        "val_loss": 1 - f1,
        "val_accuracy": f1,
        "val_roc_auc": 0.9,
        "train_loss": 0.5,
        "wall_s": 10.0 * n,
        "device_s": 20.0 * n,
        "trainable_params": 100,
        "node_id": "n1",
        "workers": 2,
        **extra,
    }


def build(run: Path, epochs: list[dict], events: list[dict], max_epochs: int = 3) -> list[dict]:
    for e in epochs:
        append_jsonl(run / EPOCHS_LOG, e)
    for e in events:
        append_jsonl(run / EVENTS_LOG, e)
    return write_tables(run, "val_f1_macro", "max", max_epochs)


def start(trial: str, strategy: str = "full") -> dict:
    return {
        "event": "start",
        "trial_id": trial,
        "config": {"strategy": strategy, f"{strategy}/head_lr": 0.01},
    }


def test_statuses_metrics_and_best(tmp_path: Path) -> None:
    ckpt = tmp_path / "trial_a" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    trials = build(
        tmp_path,
        [epoch("a", 1, 0.5), epoch("a", 2, 0.8), epoch("a", 3, 0.7), epoch("b", 1, 0.3), epoch("c", 1, 0.9)],
        [
            start("a"),
            start("b", "lora"),
            start("c"),
            {"event": "checkpoint", "trial_id": "a", "epoch": 2, "path": str(ckpt)},
            {"event": "end", "trial_id": "a", "status": "ok"},
            {"event": "end", "trial_id": "b", "status": "ok"},
            {"event": "end", "trial_id": "c", "status": "error", "error": "boom"},
        ],
    )
    by_id = {t["trial_id"]: t for t in trials}
    assert by_id["a"]["status"] == "completed" and by_id["a"]["epochs"] == 3
    assert by_id["b"]["status"] == "stopped_early" and by_id["b"]["strategy"] == "lora"
    assert by_id["c"]["status"] == "error" and by_id["c"]["error"] == "boom"
    assert by_id["a"]["val_f1_macro"] == 0.7 and by_id["a"]["best_val_f1_macro"] == 0.8
    assert by_id["a"]["best_val_loss"] == 1 - 0.8  # best of a min-metric is its minimum
    assert by_id["a"]["device_s"] == 60.0 and by_id["a"]["checkpoint"] == "trial_a/checkpoint_000001"
    assert by_id["a"]["full/head_lr"] == 0.01

    table = pq.read_table(tmp_path / TRIALS_TABLE)
    assert table.num_rows == 3 and "best_val_roc_auc" in table.column_names
    assert pq.read_table(tmp_path / EPOCHS_TABLE).num_rows == 5
    best = json.loads((tmp_path / BEST_FILE).read_text())
    # c scored higher but errored: an errored trial is never "best"
    assert best["trial_id"] == "a" and best["value"] == 0.8 and best["config"]["full/head_lr"] == 0.01


def test_repeated_epochs_after_a_resume_count_once(tmp_path: Path) -> None:
    trials = build(
        tmp_path,
        [epoch("a", 1, 0.5), epoch("a", 2, 0.6), epoch("a", 2, 0.65), epoch("a", 3, 0.7)],
        [start("a"), start("a"), {"event": "end", "trial_id": "a", "status": "ok"}],
    )
    assert len(trials) == 1 and trials[0]["epochs"] == 3
    rows = pq.read_table(tmp_path / EPOCHS_TABLE).to_pylist()
    assert [(r["epoch"], r["val_f1_macro"]) for r in rows] == [(1, 0.5), (2, 0.65), (3, 0.7)]


def test_running_trials_and_a_deleted_checkpoint(tmp_path: Path) -> None:
    trials = build(
        tmp_path,
        [epoch("a", 1, 0.5)],
        [start("a"), {"event": "checkpoint", "trial_id": "a", "epoch": 1, "path": str(tmp_path / "gone")}],
    )
    assert trials[0]["status"] == "running" and trials[0]["checkpoint"] is None


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    append_jsonl(tmp_path / "x.jsonl", {"a": 1})
    with open(tmp_path / "x.jsonl", "a") as f:
        f.write('{"a": ')
    assert read_jsonl(tmp_path / "x.jsonl") == [{"a": 1}]


def test_checkpoint_locations_keep_their_filesystem(tmp_path: Path) -> None:
    # Ray drops the scheme from checkpoint paths on S3/GCS: it comes back from checkpoint_storage.
    assert checkpoint_uri("bucket/runs/s/trial_1/checkpoint_0", "s3://bucket/runs") == (
        "s3://bucket/runs/s/trial_1/checkpoint_0"
    )
    assert checkpoint_uri("/abs/ckpt", "file:///abs") == "/abs/ckpt"
    assert checkpoint_uri("/abs/ckpt", None) == "/abs/ckpt"
    (tmp_path / "ckpt").mkdir()
    assert checkpoint_exists(str(tmp_path / "ckpt")) and checkpoint_exists(f"file://{tmp_path}/ckpt")
    assert not checkpoint_exists(f"file://{tmp_path}/gone")


def test_a_checkpoint_outside_the_run_directory_is_recorded_by_its_full_location(tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "checkpoints" / "trial_a" / "checkpoint_0001"
    run_dir.mkdir()
    elsewhere.mkdir(parents=True)
    inside = run_dir / "trial_a" / "checkpoint_0002"
    inside.mkdir(parents=True)
    append_jsonl(run_dir / EVENTS_LOG, {"event": "start", "trial_id": "a", "config": {"strategy": "full"}})
    for epoch, value, path in ((1, 0.9, elsewhere), (2, 0.5, inside)):
        append_jsonl(run_dir / EPOCHS_LOG, {"trial_id": "a", "epoch": epoch, "val_accuracy": value})
        append_jsonl(
            run_dir / EVENTS_LOG, {"event": "checkpoint", "trial_id": "a", "epoch": epoch, "path": str(path)}
        )
    (row,) = write_tables(run_dir, "val_accuracy", "max", 2)
    assert row["checkpoint"] == str(elsewhere)  # the best epoch's, outside: absolute
    elsewhere.rmdir()
    (row,) = write_tables(run_dir, "val_accuracy", "max", 2)
    assert row["checkpoint"] == "trial_a/checkpoint_0002"  # the best one left, inside: relative


def test_trials_read_while_the_search_rewrites_them_are_whole(tmp_path: Path) -> None:
    """A reader polling trials.parquet while trials finish (a test, `tlsearch report` on a live run)
    sees one whole file each time, never one file's footer with another's pages."""
    build(tmp_path, [epoch("t0", 1, 0.5)], [start("t0"), {"event": "end", "trial_id": "t0", "status": "ok"}])
    finished = threading.Event()

    def finish_trials() -> None:
        for n in range(1, 120):
            build(
                tmp_path,
                [epoch(f"t{n}", 1, 0.5)],
                [start(f"t{n}"), {"event": "end", "trial_id": f"t{n}", "status": "ok"}],
            )
        finished.set()

    writer = threading.Thread(target=finish_trials, daemon=True)
    writer.start()
    seen = []
    while not finished.is_set():
        seen.append(len(read_trials(tmp_path)))
    writer.join()
    assert len(seen) > 20 and seen == sorted(seen) and len(read_trials(tmp_path)) == 120
