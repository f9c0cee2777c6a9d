"""Search space (Optuna define-by-run) and the typed trial config. Imports neither torch nor ray."""

from tlsearch.space.space import Dim, SearchSpace, build_space, make_sampler, seed_points
from tlsearch.space.trial_config import Continuation, TrialConfig, flatten

__all__ = [
    "Continuation",
    "Dim",
    "SearchSpace",
    "TrialConfig",
    "build_space",
    "flatten",
    "make_sampler",
    "seed_points",
]
