"""The headline figures file names every key of issues 5, 24 and 26, with its source, null if unmeasured."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.summary import SOURCES, collect

KEYS = {
    "trial_overhead_s",
    "device_busy_fraction",
    "feature_cache_speedup",
    "train_vs_plain_throughput",
    "time_to_target_vs_random",
    "bookkeeping_s_per_trial",
    "peers_best_vs_tlsearch",
    "peers_time_to_their_best_ratio",
    "fsdp_state_bytes_per_worker_vs_ddp",
    "fsdp_memory_per_worker_vs_ddp",
    "fsdp_vs_ddp_throughput",
    "streamed_vs_memory_held",
    "soak_rss_growth_mb",
    "soak_leftover_placement_groups",
    "driver_rss_growth_500_trials_mb",
    "chaos_matches_run_without_faults",
    "gpu_name",
    "vit_b16_full_img_s",
    "vit_b16_full_mfu",
}


def test_every_key_is_collected_with_its_file(tmp_path: Path) -> None:
    assert set(SOURCES) == KEYS
    (tmp_path / "trial_overhead.json").write_text(
        json.dumps({"trial_overhead_s": 0.4, "device_busy_fraction": None, "date": "d", "git_sha": "s"})
    )
    summary = collect(tmp_path)
    assert summary["trial_overhead_s"]["value"] == 0.4 and summary["trial_overhead_s"]["measured"] == "d"
    assert (
        summary["device_busy_fraction"]["value"] is None
        and "has no" in summary["device_busy_fraction"]["why_null"]
    )
    assert summary["vit_b16_full_mfu"] == {
        "value": None,
        "file": "benchmarks/results/gpu_results.json",
        "why_null": "not measured yet",
    }
