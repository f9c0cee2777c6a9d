"""A 50-trial search leaks no process or placement group between trials, and its reused trial
process's memory stays flat: the soak benchmark's targets, held in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import RSS_GROWTH_LIMIT_MB, soak


@pytest.mark.integration
@pytest.mark.slow
def test_a_50_trial_search_leaks_no_process_placement_group_or_memory(tmp_path: Path) -> None:
    figures = soak(50, tmp_path)  # its own local cluster, shut down at the end
    assert figures["completed"] == 50 and len(figures["strategies"]) == 5, figures
    assert figures["trial_processes"] == 1 and figures["trials_in_longest_process"] == 50, figures
    assert figures["soak_rss_growth_mb"] <= RSS_GROWTH_LIMIT_MB, figures
    leftovers = (figures["soak_leftover_placement_groups"], figures["soak_leftover_trial_actors"])
    assert leftovers == (0, 0), figures
    # At most one trial's, plus the one Tune readies next; a leak would grow with the trials.
    assert figures["peak_placement_groups"] <= 2 and figures["peak_trial_actors"] <= 2, figures
