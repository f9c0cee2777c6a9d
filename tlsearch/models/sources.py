"""Model sources: build a classifier with a new head from timm or Hugging Face, by name or local path.

Every source (tlsearch.models.base.ModelSource; one module each: timm_source.py, hf_source.py) returns
a LoadedModel: the model, the names of its new head modules, the LayerMap (computed before any
wrapping, since peft renames parameters), the input preprocessing and the source itself, which the rest
of tlsearch asks whatever depends on the kind of model.
"""

from __future__ import annotations

from tlsearch.models import hf_source, timm_source  # noqa: F401  (registration)
from tlsearch.models.base import SOURCES, LoadedModel, ModelSource
from tlsearch.spec import vocab
from tlsearch.spec.model import ModelSpec

__all__ = ["SOURCES", "LoadedModel", "ModelSource", "build_model"]


def build_model(spec: ModelSpec, num_classes: int, *, weights: bool = True) -> LoadedModel:
    """The classifier for `spec` with `num_classes` outputs. weights=False builds the architecture on
    the meta device (no memory, no files read beyond configs): used by the driver to check a search."""
    return SOURCES.get(spec.source).load(spec, num_classes, weights)


assert set(vocab.MODEL_SOURCES) == set(SOURCES), "model sources out of sync with spec.vocab"
