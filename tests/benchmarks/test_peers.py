"""benchmarks/peers.py: the headline figures from the recorded runs."""

from __future__ import annotations

from typing import Any

from benchmarks.peers import figures, first_reach


def _run(peer: str, seed: int, test: float, best_val: float, at: float, evaluations: list) -> dict[str, Any]:
    return {
        "task": "bbc",
        "peer": peer,
        "seed": seed,
        "budget_s": 100.0,
        "metric": "f1_macro",
        "best_val": best_val,
        "best_val_at_s": at,
        "evaluations": [{"t": t, "value": v} for t, v in evaluations],
        "test": {"f1_macro": test},
    }


def test_figures_pair_runs_by_seed_and_null_when_tlsearch_never_reaches() -> None:
    ours = [
        _run("tlsearch", 0, 0.90, 0.92, 30.0, [(10.0, 0.80), (30.0, 0.92)]),
        _run("tlsearch", 1, 0.88, 0.85, 50.0, [(50.0, 0.85), (120.0, 0.99)]),  # after the budget: ignored
    ]
    peer = [
        _run("hf_optuna", 0, 0.86, 0.90, 60.0, []),  # tlsearch reaches 0.90 at 30 s: ratio 0.5
        _run("hf_optuna", 1, 0.90, 0.86, 80.0, []),  # never within the budget
    ]
    out = figures(ours + peer)
    entry = out["per_task_and_peer"]["bbc/hf_optuna"]
    assert entry["time_ratio"] == [0.5, None] and entry["mean_time_ratio"] is None
    assert abs(out["peers_best_vs_tlsearch"] - ((0.90 - 0.86) + (0.88 - 0.90)) / 2) < 1e-12
    assert out["peers_time_to_their_best_ratio"] is None
    assert first_reach(ours[1]["evaluations"], 0.9, 100.0) is None
    assert figures(ours + peer[:1])["peers_time_to_their_best_ratio"] == 0.5
