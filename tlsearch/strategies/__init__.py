"""Transfer strategies, one package each: `<name>/__init__.py` declares its knobs and its
registration (torch-free: specs are validated without torch), `<name>/apply.py` what it does to a
model (tlsearch.strategies.base has the interface and the shared mechanics).

Importing this package registers the built-in strategies, in this order: the order of the spec's
defaults, of the default seed configurations and of the `strategy` choices the sampler draws from.
A new strategy is its own package plus one line here.
"""

from tlsearch.spec.strategy import register_strategy
from tlsearch.strategies import full, gradual, ia3, linear_probe, lora, lp_ft, partial, prompt_tuning

for _builtin in (linear_probe, partial, full, lora, gradual, lp_ft, ia3, prompt_tuning):
    register_strategy(_builtin.STRATEGY)
