"""Transfer strategies, one registry: linear_probe, partial, full, lora."""

from tlsearch.models.sources import LoadedModel
from tlsearch.space.trial_config import TrialConfig
from tlsearch.spec import vocab
from tlsearch.strategies import finetune, linear_probe, lora  # noqa: F401  (registration)
from tlsearch.strategies.base import STRATEGIES, ParamGroup, Prepared, Strategy

assert set(STRATEGIES) == set(vocab.STRATEGIES), "strategies out of sync with spec.vocab"


def prepare(loaded: LoadedModel, config: TrialConfig) -> Prepared:
    """Apply the trial's strategy to a freshly loaded model."""
    return STRATEGIES.get(config.strategy)(loaded, config)


__all__ = ["STRATEGIES", "ParamGroup", "Prepared", "Strategy", "prepare"]
