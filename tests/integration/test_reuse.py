"""Reused trial processes (Tune's reuse_actors): trials follow one another in one process, start
training at once, and train exactly as they would in a new process."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import text_spec
from tlsearch.results.files import EPOCHS_TABLE
from tlsearch.search.runner import run_search
from tlsearch.spec import validate_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = [
    {"strategy": "full", "head_lr": 3e-2, "backbone_lr": 3e-4},
    {"strategy": "lora", "head_lr": 1e-2, "lr": 3e-3, "rank": 4},
    {"strategy": "linear_probe", "head_lr": 2e-2},
    {"strategy": "full", "head_lr": 1e-2, "backbone_lr": 1e-4},
]


def _search(tiny_bert: Path, data: dict, storage: Path, reuse: bool) -> tuple[list[dict], list[dict]]:
    spec = validate_spec(
        text_spec(
            tiny_bert,
            data,
            storage,
            name=f"reuse-{reuse}",
            search={
                "num_samples": len(CONFIGS),
                "max_epochs": 2,
                "max_concurrent": 1,
                "scheduler": {"type": "fifo"},
                "seed_configs": CONFIGS,
            },
            strategies={
                "full": {},
                "lora": {"rank": [4]},
                "linear_probe": {},
                "common": {"batch_size": 8},
            },
            training={"reuse_processes": reuse},
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
    # Warm trials load nothing: the pretrained model and the tokenized data were kept.
    assert all(t["model_load_s"] < 1.0 and t["data_load_s"] < 0.5 for t in reused[1:])
    assert all(t["workers_start_s"] < 0.5 for t in reused + fresh)  # no worker group to start

    # The same configurations, epoch by epoch, give the same numbers either way.
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

    for ours, theirs in zip(by_config(reused_epochs), by_config(fresh_epochs), strict=True):
        assert ours[:3] == theirs[:3]
        assert ours[3:] == pytest.approx(theirs[3:], rel=1e-6, abs=1e-7)
