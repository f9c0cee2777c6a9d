"""The search spec (YAML -> validated pydantic model). Imports neither torch nor ray."""

# The built-in strategies' declarations (torch-free) register themselves: a spec names them.
import tlsearch.strategies  # noqa: F401
from tlsearch.spec.load import apply_overrides, load_spec, validate_spec
from tlsearch.spec.model import Spec
from tlsearch.spec.params import Param

__all__ = ["Param", "Spec", "apply_overrides", "load_spec", "validate_spec"]
