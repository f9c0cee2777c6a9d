"""Acquisition over the untried configurations of a listed space: TPE's ranking, on real studies."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.search.test_study import discrete_searcher, run
from tlsearch.search.policy.listed import ListedSpace
from tlsearch.search.policy.optuna_adapter import tpe_acquisition


def test_tpe_runs_the_untried_configuration_its_model_ranks_highest(tmp_path: Path) -> None:
    """Ten configurations; after five, TPE's next one is the untried configuration with the largest
    l(x)/g(x): the best one's head LR with the other batch size. (TPE's own draw would repeat the
    best configuration, which the searcher would replace with an untried one at random.)"""
    search = discrete_searcher(tmp_path, head_lr=(0.0001, 0.001, 0.01, 0.1, 1.0))
    history = {(0.1, 16): 0.9, (0.0001, 16): 0.1, (0.001, 16): 0.2, (0.01, 32): 0.3, (1.0, 16): 0.25}
    for i, ((head_lr, batch_size), accuracy) in enumerate(history.items()):
        search.study.enqueue_trial({"linear_probe/head_lr": head_lr, "common/batch_size": batch_size})
        run(search, f"h{i}", [accuracy])
    untried = search._listed.untried(search.study)
    assert untried is not None and len(untried) == 5
    scores = tpe_acquisition(search.study, search.study.sampler, untried)
    assert scores is not None
    ranked = sorted(zip(scores, untried, strict=True), key=lambda pair: pair[0], reverse=True)
    assert ranked[0][1] == {"linear_probe/head_lr": 0.1, "common/batch_size": 32}

    config = search.suggest("next")
    assert (config["linear_probe"]["head_lr"], config["common"]["batch_size"]) == (0.1, 32)
    assert search.duplicates_skipped == 0


def test_no_ranking_without_a_tpe_model(tmp_path: Path) -> None:
    """Before TPE's start-up trials are done, or with the random sampler, untried picks are random."""
    search = discrete_searcher(tmp_path)
    points = search._listed.untried(search.study)
    assert points is not None
    assert tpe_acquisition(search.study, search.study.sampler, points) is None  # no trials yet
    assert tpe_acquisition(search.study, optuna.samplers.RandomSampler(seed=0), points) is None


def test_untried_leaves_out_what_runs_or_ran_not_what_failed_or_waits(tmp_path: Path) -> None:
    search = discrete_searcher(tmp_path, skip_duplicates=False)  # draws as told: states set by hand
    study, listed = search.study, search._listed
    points = listed.points
    assert points is not None and len(points) == 6  # linear probe × 3 head LRs × 2 batch sizes
    for i, state in enumerate((TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        study.enqueue_trial(points[i])
        search.suggest(f"t{i}")
        if state != TrialState.RUNNING:
            study.tell(search.asked[f"t{i}"], 0.5 if state == TrialState.COMPLETE else None, state=state)
    study.enqueue_trial(points[4])  # waiting to run
    assert listed.untried(study) == points[3:]
    # A random pick is seeded from the study's size: the same history picks the same.
    assert listed.at_random(study, points) == listed.at_random(study, points)


def test_only_a_search_space_lists_its_configurations() -> None:
    """Ray's OptunaSearch also takes a dict of distributions: a space the policy cannot list."""
    assert ListedSpace({"x": optuna.distributions.FloatDistribution(0, 1)}).points is None
