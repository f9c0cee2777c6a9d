"""Cached features in a real search: two linear-probe trials running side by side on a local Ray
cluster compute the backbone's features once; the other trial reuses them."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tlsearch.results.files import TRIALS_TABLE
from tlsearch.search.runner import run_search
from tlsearch.spec import validate_spec
from tlsearch.testing import text_spec
from tlsearch.train.features import FEATURES_DIR, MANIFEST, FeatureStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_second_linear_probe_trial_reuses_the_first_ones_features(  # type: ignore[no-untyped-def]
    ray_connected, tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    spec = validate_spec(
        text_spec(
            tiny_bert,
            text_data,
            tmp_path / "runs",
            name="feature-cache",
            search={"num_samples": 2, "max_epochs": 2, "scheduler": {"type": "fifo"}},
            strategies={"linear_probe": {"head_lr": {"low": 1e-3, "high": 1e-1, "log": True}}},
            resources={"workers_per_trial": 1, "cpus_per_worker": 1},
            tracking={"wandb": {"mode": "disabled"}},
        )
    )
    outcome = run_search(spec)
    trials = pq.read_table(outcome.run_dir / TRIALS_TABLE).to_pylist()
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials), trials
    assert sorted(t["feature_cache"] for t in trials) == ["built", "reused"]
    builder = next(t for t in trials if t["feature_cache"] == "built")

    store = FeatureStore(outcome.run_dir / FEATURES_DIR)
    (cache,) = [p for p in store.root.iterdir() if p.is_dir()]
    manifest = store.lookup(cache.name)
    assert manifest is not None and manifest["supported"]
    assert manifest["built_by"]["trial_id"] == builder["trial_id"]
    assert manifest["splits"]["train"]["rows"] == 48 and manifest["splits"]["validation"]["rows"] == 24
    assert (cache / MANIFEST).is_file() and not list(store.root.glob(".*tmp*"))
    # The build is the builder's device time: inside its wall and device seconds.
    assert 0 < builder["feature_cache_s"] < builder["wall_s"] <= builder["device_s"]
