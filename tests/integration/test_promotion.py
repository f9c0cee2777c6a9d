"""ASHA's promotion in a real search: the promoted trial continues the stopped one from its Tune
checkpoint (tlsearch/search/study.py, trainable.find_checkpoint, the loop's restore)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tlsearch.results.files import EPOCHS_TABLE, TRIALS_TABLE, spent_device_s
from tlsearch.search.runner import run_search
from tlsearch.spec import validate_spec
from tlsearch.testing import text_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAD_LRS = [1e-4, 1.0, 10.0]


def _search(
    tiny_bert: Path,
    data: dict,
    storage: Path,
    name: str,
    workers: int,
    **search: Any,
) -> Path:
    spec = validate_spec(
        text_spec(
            tiny_bert,
            data,
            storage,
            name=name,
            search={
                "metric": "val_loss",  # continuous: no ties between the three configurations
                "max_concurrent": 1,
                "seed_configs": [{"strategy": "linear_probe", "head_lr": lr} for lr in HEAD_LRS],
                **search,
            },
            strategies={
                "linear_probe": {"head_lr": HEAD_LRS},
                "common": {"batch_size": 8, "weight_decay": 0.0, "warmup_fraction": 0.0},
            },
            resources={"workers_per_trial": workers, "cpus_per_worker": 1},
            tracking={"wandb": {"mode": "disabled"}},
        )
    )
    return run_search(spec).run_dir


@pytest.mark.parametrize("workers", [1, 2], ids=["in-actor", "ray-train-ddp"])
def test_a_promoted_trial_continues_from_the_stopped_ones_checkpoint(
    workers: int, ray_connected, tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Three configurations, seeded best, middle, worst by their first epoch: ASHA (grace 1,
    reduction factor 2) stops the middle one and the worst after epoch 1, judged against what came
    before them. With all three in, the middle one is within the top half of rung 1: it is promoted,
    and the new trial starts from its epoch-1 checkpoint (reported again as it was), then trains
    epoch 2. In Tune's checkpoints (one worker) and Ray Train's (DDP)."""
    # The tiny model's features hardly tell the classes apart, so one epoch of AdamW moves the head
    # about as far as its learning rate lets it, and the validation loss grows with it: 1e-4 stays at
    # ln 3 (1.0987), 1.0 reaches 1.14 to 2.4, 10.0 about 26. Asserted below, as the test's premise.
    best, middle, worst = HEAD_LRS
    run_dir = _search(
        tiny_bert,
        text_data,
        tmp_path / "runs",
        "promotion",
        workers,
        num_samples=6,
        max_epochs=3,
        scheduler={"grace_period": 1, "reduction_factor": 2},
    )
    trials = sorted(pq.read_table(run_dir / TRIALS_TABLE).to_pylist(), key=lambda t: t["first_step_at"] or 0)
    epochs = pq.read_table(run_dir / EPOCHS_TABLE).to_pylist()
    first_epoch = {e["trial_id"]: e["val_loss"] for e in epochs if e["epoch"] == 1}
    seeded = [first_epoch[t["trial_id"]] for t in trials[:3]]
    assert seeded == sorted(seeded), seeded
    assert [(t["linear_probe/head_lr"], t["status"]) for t in trials[:3]] == [
        (best, "completed"),
        (middle, "stopped_early"),
        (worst, "stopped_early"),
    ]
    assert len(trials) == 4  # then the search ends by itself: nothing else is promotable
    stopped, promoted = trials[1], trials[3]
    assert promoted["linear_probe/head_lr"] == middle
    assert (promoted["continues_trial"], promoted["continues_epoch"]) == (stopped["trial_id"], 1)
    mine = sorted((e for e in epochs if e["trial_id"] == promoted["trial_id"]), key=lambda e: e["epoch"])
    theirs = next(e for e in epochs if e["trial_id"] == stopped["trial_id"])
    # Epoch 1 is the stopped trial's, to the bit (not trained again); training goes on from epoch 2.
    assert mine[0]["epoch"] == 1 and mine[0]["val_loss"] == theirs["val_loss"]
    assert mine[0]["epoch_s"] == theirs["epoch_s"] and [e["epoch"] for e in mine[1:]] == list(
        range(2, len(mine) + 1)
    )
    assert promoted["inherited_device_s"] == theirs["device_s"] > 0
    assert 0 < spent_device_s(promoted) < promoted["device_s"]
