"""Reused trial processes (Tune's reuse_actors): trials follow one another in one process, start
training at once, and train exactly as they would in a new process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tlsearch.results.files import EPOCHS_TABLE
from tlsearch.search.runner import run_search
from tlsearch.spec import validate_spec
from tlsearch.testing import text_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = [
    {"strategy": "full", "head_lr": 3e-2, "backbone_lr": 3e-4},
    {"strategy": "lora", "head_lr": 1e-2, "lr": 3e-3, "rank": 4},
    {"strategy": "linear_probe", "head_lr": 2e-2},
    {"strategy": "full", "head_lr": 1e-2, "backbone_lr": 1e-4},
]


def _search(
    tiny_bert: Path,
    data: dict,
    storage: Path,
    reuse: bool,
    name: str | None = None,
    scheduler: dict | None = None,
    max_epochs: int = 2,
    **training: Any,
) -> tuple[list[dict], list[dict]]:
    spec = validate_spec(
        text_spec(
            tiny_bert,
            data,
            storage,
            name=name or f"reuse-{reuse}",
            search={
                "num_samples": len(CONFIGS),
                "max_epochs": max_epochs,
                "max_concurrent": 1,
                "scheduler": scheduler or {"type": "fifo"},
                "seed_configs": CONFIGS,
                "metric": "val_loss",
            },
            strategies={
                "full": {},
                "lora": {"rank": [4]},
                "linear_probe": {},
                "common": {"batch_size": 8},
            },
            training={"reuse_processes": reuse, **training},
            tracking={"wandb": {"mode": "disabled"}},
        )
    )
    run_dir = run_search(spec).run_dir
    epochs = sorted(pq.read_table(run_dir / EPOCHS_TABLE).to_pylist(), key=lambda e: (e["time"], e["epoch"]))
    trials = sorted({e["trial_id"]: e for e in epochs}.values(), key=lambda e: e["first_step_at"])
    return trials, epochs


def test_reused_processes_start_at_once_and_train_identically(
    ray_connected, tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    reused, reused_epochs = _search(tiny_bert, text_data, tmp_path / "runs", reuse=True)
    fresh, fresh_epochs = _search(tiny_bert, text_data, tmp_path / "runs", reuse=False)

    assert len({t["rank0_pid"] for t in reused}) == 1  # one process ran every trial, in turn
    assert len({t["rank0_pid"] for t in fresh}) == len(CONFIGS)
    # Trials after the first in a reused process load nothing: the pretrained model and the
    # tokenized data were kept.
    assert all(t["model_load_s"] < 1.0 and t["data_load_s"] < 0.5 for t in reused[1:])
    assert all(t["workers_start_s"] < 0.5 for t in reused + fresh)  # no worker group to start

    # The same configurations, epoch by epoch, give the same numbers either way.
    _assert_same_epochs(reused_epochs, fresh_epochs)


def _assert_same_epochs(ours: list[dict], theirs: list[dict]) -> None:
    def by_config(epochs: list[dict]) -> list[tuple]:
        return sorted(
            (
                e["strategy"],
                round(e["lr_head"], 12),
                e["epoch"],
                e["train_loss"],
                e["val_loss"],
                e["val_accuracy"],
            )
            for e in epochs
        )

    for mine, other in zip(by_config(ours), by_config(theirs), strict=True):
        assert mine[:3] == other[:3]
        assert mine[3:] == pytest.approx(other[3:], rel=1e-6, abs=1e-7)


def test_background_reports_train_as_inline_ones_and_stopped_trials_hand_their_process_on(
    ray_connected, tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """With `training.background_checkpoints` the next epoch trains while Tune takes the last one:
    the numbers, ASHA's decisions and the checkpoints are those of reports made in line, and a trial
    ASHA stops (its thread mid-epoch by then) ends in time for the next trial to reuse its process."""
    asha = {"grace_period": 1, "reduction_factor": 2}  # on val_loss (continuous: no ties)
    runs = tmp_path / "runs"
    background, background_epochs = _search(
        tiny_bert, text_data, runs, True, "background", asha, 3, background_checkpoints=True
    )
    inline, inline_epochs = _search(
        tiny_bert, text_data, runs, True, "inline", asha, 3, background_checkpoints=False
    )

    _assert_same_epochs(background_epochs, inline_epochs)
    epochs_per_config = sorted((t["strategy"], round(t["lr_head"], 12), t["epoch"]) for t in background)
    assert epochs_per_config == sorted((t["strategy"], round(t["lr_head"], 12), t["epoch"]) for t in inline)
    assert min(e for *_, e in epochs_per_config) < 3  # ASHA stopped some trials early ...
    assert len({t["rank0_pid"] for t in background}) == 1  # ... and each handed its process on
    assert all(e["checkpoint_write_s"] > 0 and e["checkpoint_save_s"] >= 0 for e in background_epochs)
