"""Duplicate skipping: a configuration is never trained twice (`search.skip_duplicates`).

In a space of choices and integers the sampler draws configurations it has already run (TPE ever
more often as it converges), and a trial's training is deterministic, so a repeat costs a trial's
device time and teaches nothing. A repeated draw is recorded in the study as FAIL with the user
attribute `duplicate_of` (the earlier trial's number): the samplers ignore FAIL, and the earlier
trial already informs them. Where the space cannot be listed the searcher draws again at random
(TPE would draw the same point again: its choice is the best candidate under a model that the
skipped draw does not change), up to MAX_REDRAWS times; when no draw finds an untried one, repeats
run from then on (said once) rather than each suggestion spending draws.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tlsearch.search.policy.trials import config_key, taken

MAX_REDRAWS = 32


@dataclass
class Duplicates:
    """Whether repeats are skipped (until the space looks exhausted), and how many were."""

    enabled: bool = True
    skipped: int = 0

    def earlier(self, study: optuna.Study, trial: optuna.Trial) -> int | None:
        """The number of an earlier trial (running, completed or pruned) with the same parameters."""
        return taken(study, but=trial.number).get(config_key(trial.params))

    def skip(self, study: optuna.Study, trial: optuna.Trial, earlier: int) -> None:
        trial.set_user_attr("duplicate_of", earlier)
        study.tell(trial, state=TrialState.FAIL)
        self.skipped += 1

    def give_up(self, why: str, trials: int) -> None:
        """Repeats run from now on: better than a search that stalls, or spends draws on every suggestion."""
        self.enabled = False
        print(
            f"[tlsearch] {why}: the search space looks exhausted after {trials} trials; "
            "configurations repeat from now on",
            flush=True,
        )


@contextlib.contextmanager
def random_redraws(study: optuna.Study) -> Iterator[Iterator[int]]:
    """MAX_REDRAWS draws, each by a random sampler seeded from the study's size (the same history
    draws the same configurations); the study's own sampler is back when the block ends."""
    sampler = study.sampler

    def redraws() -> Iterator[int]:
        for redraw in range(MAX_REDRAWS):
            study.sampler = optuna.samplers.RandomSampler(seed=len(study.trials) + redraw)
            yield redraw

    try:
        yield redraws()
    finally:
        study.sampler = sampler
