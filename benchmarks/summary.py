"""Collect the headline performance figures into benchmarks/results/summary.json.

    .venv/bin/python benchmarks/summary.py

Reads the latest result file of each benchmark (never measures anything itself). Each key holds
`{"value": ..., "file": ..., "measured": <date of that file>}`; `value` is null, with the reason, where
the benchmark has not produced the figure yet (a GPU figure without a GPU run, for instance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, write_result

# key -> (result file, field in it)
SOURCES: dict[str, tuple[str, str]] = {
    "trial_overhead_s": ("trial_overhead.json", "trial_overhead_s"),
    "device_busy_fraction": ("trial_overhead.json", "device_busy_fraction"),
    "feature_cache_speedup": ("feature_cache.json", "speedup"),
    "train_vs_plain_throughput": ("throughput.json", "train_vs_plain_throughput"),
    # The table spanning the demo's whole space (61 configurations), 200 seeds per policy replayed
    # on simulated device clocks (`--engine events`): ten seeds through Tune
    # (search_efficiency_wide.json) pin random search's long-tailed median down only roughly. The
    # other tables: search_efficiency_events.json, _val_all_events, _vision_events.
    "time_to_target_vs_random": ("search_efficiency_wide_events.json", "time_to_target_vs_random"),
    "bookkeeping_s_per_trial": ("bookkeeping.json", "bookkeeping_s_per_trial"),
    # Against Trainer.hyperparameter_search (Optuna, Ray) and a plain Optuna loop at equal budget.
    "peers_best_vs_tlsearch": ("peers.json", "peers_best_vs_tlsearch"),
    "peers_time_to_their_best_ratio": ("peers.json", "peers_time_to_their_best_ratio"),
    # Sharded against data parallel, 2 CPU workers, BERT-base shapes: what each worker holds.
    "fsdp_state_bytes_per_worker_vs_ddp": ("fsdp.json", "fsdp_state_bytes_per_worker_vs_ddp"),
    "fsdp_memory_per_worker_vs_ddp": ("fsdp.json", "fsdp_memory_per_worker_vs_ddp"),
    "fsdp_vs_ddp_throughput": ("fsdp.json", "fsdp_vs_ddp_throughput"),
    # What a process holds of a training split streamed by Ray Data, over holding it tokenised whole.
    "streamed_vs_memory_held": ("streamed_data.json", "streamed_vs_memory_held"),
    # A 50-trial search's trial process: resident memory at its last trial less at its 5th (MB).
    "soak_rss_growth_mb": ("soak.json", "soak_rss_growth_mb"),
    # Placement groups still held once that search ended.
    "soak_leftover_placement_groups": ("soak.json", "soak_leftover_placement_groups"),
    # The search driver's RSS growth from trial 10 to 500 of a replayed search (issue 26: < 200 MB);
    # the larger of Tune + Optuna alone and with tlsearch's ResultsRecorder and journal storage.
    "driver_rss_growth_500_trials_mb": ("driver_memory.json", "driver_rss_growth_500_trials_mb"),
    # Trial processes killed at random mid-search: every trial ends as in a run without faults.
    "chaos_matches_run_without_faults": ("chaos.json", "matches"),
    "gpu_name": ("gpu_results.json", "gpu_name"),
    "vit_b16_full_img_s": ("gpu_results.json", "vit_b16_full_img_s"),
    "vit_b16_full_mfu": ("gpu_results.json", "vit_b16_full_mfu"),
}


def collect(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for key, (name, field) in SOURCES.items():
        path = results / name
        entry: dict[str, Any] = {"value": None, "file": f"benchmarks/results/{name}"}
        if not path.exists():
            entry["why_null"] = "not measured yet"
        else:
            data = json.loads(path.read_text())
            entry["value"] = data.get(field)
            entry["measured"] = data.get("date")
            entry["git_sha"] = data.get("git_sha")
            if entry["value"] is None:
                entry["why_null"] = f"{name} has no `{field}`"
        summary[key] = entry
    return summary


def refresh() -> Path:
    """Rewrite summary.json from the result files (benchmarks call this after writing theirs)."""
    return write_result("summary", collect(), "python benchmarks/summary.py")


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    summary = collect()
    for key, entry in summary.items():
        print(f"{key:28} {entry['value']!s:>14}  {entry['file']}")
    print(write_result("summary", summary, "python benchmarks/summary.py"))


if __name__ == "__main__":
    main()
