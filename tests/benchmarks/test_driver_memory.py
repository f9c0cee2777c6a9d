"""The driver-memory benchmark samples at the trials it reports, and traces what grew (no Ray)."""

from __future__ import annotations

import tracemalloc

from benchmarks.driver_memory import MARKS, MemorySampler


def test_the_sampler_samples_every_n_trials_and_at_the_reported_ones() -> None:
    tracemalloc.start()
    try:
        sampler = MemorySampler(every=4, trace=True)
        held = []
        for _ in range(12):
            sampler.on_trial_complete(0, [], None)
            held.append(bytearray(200_000))  # what a leak would look like: 0.2 MB a trial
        grown = sampler.grown()
    finally:
        tracemalloc.stop()
    assert [s["trials_ended"] for s in sampler.samples] == [0, 1, 4, 8, 10, 12]
    assert all(s["rss_mb"] > 0 and 0 < s["uss_mb"] <= s["rss_mb"] for s in sampler.samples)
    assert 1 in MARKS and 10 in MARKS
    # Two trials' allocations after the snapshot at trial 10, found at their line.
    assert grown["traced_growth_mb"] >= 0.4
    assert "test_driver_memory.py" in grown["grown_by_lineno"][0]["where"]
