"""`training.compile: true` in a real search: a LoRA trial on two Ray Train DDP workers compiles the
DDP-wrapped peft model, trains, evaluates and checkpoints the adapter under its own names."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from tlsearch.results.files import TRIALS_TABLE
from tlsearch.search.runner import run_search
from tlsearch.spec import validate_spec
from tlsearch.testing import text_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_compiled_lora_trial_on_two_ddp_workers(
    ray_connected, tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    spec = validate_spec(
        text_spec(
            tiny_bert,
            text_data,
            tmp_path / "runs",
            strategies={"lora": {"rank": 4, "targets": "attention"}, "common": {"batch_size": 8}},
            search={"num_samples": 1, "max_epochs": 2, "scheduler": {"type": "fifo"}},
            resources={"workers_per_trial": 2, "cpus_per_worker": 1},
            training={"compile": True},
        )
    )
    run_dir = run_search(spec).run_dir
    (trial,) = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
    assert trial["status"] == "completed" and trial["epochs"] == 2, trial["error"]
    assert trial["workers"] == 2 and trial["strategy"] == "lora"
    checkpoint = run_dir / trial["checkpoint"]
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert adapter and all("_orig_mod" not in name and "module." not in name for name in adapter)
    assert any("lora_A" in name for name in adapter)
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert 0.0 <= meta["metrics"]["val_accuracy"] <= 1.0 and meta["metrics"]["train_loss"] > 0
