"""The search spec (YAML -> validated pydantic model). Imports neither torch nor ray."""

from tlsearch.spec.load import apply_overrides, load_spec, validate_spec
from tlsearch.spec.model import Spec
from tlsearch.spec.params import Param

__all__ = ["Param", "Spec", "apply_overrides", "load_spec", "validate_spec"]
