"""Transfer strategies, one registry: linear_probe, partial, full, lora."""

from tlsearch.spec import vocab
from tlsearch.strategies import finetune, linear_probe, lora  # noqa: F401  (registration)
from tlsearch.strategies.base import STRATEGIES, ParamGroup, Prepared, Strategy

assert tuple(STRATEGIES) == tuple(sorted(STRATEGIES, key=vocab.STRATEGIES.index)) or set(STRATEGIES) == set(
    vocab.STRATEGIES
), "strategies out of sync with spec.vocab"


def prepare(loaded, config) -> Prepared:  # type: ignore[no-untyped-def]
    return STRATEGIES.get(config.strategy)(loaded, config)


__all__ = ["STRATEGIES", "ParamGroup", "Prepared", "Strategy", "prepare"]
