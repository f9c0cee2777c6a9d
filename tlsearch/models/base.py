"""What every model source gives the rest of tlsearch: the `ModelSource` Protocol and `LoadedModel`.

A source (timm, Hugging Face: one module each, `timm_source.py` and `hf_source.py`) knows how to load
its models, number their layers, cut them for the feature cache, fingerprint what the cache's key
needs and feed them a batch. Nothing outside the source modules asks which source built a model: it
asks `loaded.source`, so a new source is one new module and one registry entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from tlsearch.models.layers import LayerMap
from tlsearch.registry import Registry
from tlsearch.spec.model import ModelSpec

if TYPE_CHECKING:
    from tlsearch.models.tails import Tail


@dataclass
class LoadedModel:
    model: nn.Module
    head_modules: tuple[str, ...]
    layers: LayerMap  # computed before any wrapping, since peft renames parameters
    # How inputs are prepared for the model: a transformers tokenizer (text), or a timm-style data
    # config (input_size, interpolation, crop_pct, crop_mode, mean, std) for images, whichever source
    # built the model: the loop's image pipeline is timm's eval transform and ToDevice's normalisation.
    preprocessing: Any
    source: ModelSource  # the source that built it: the one place that knows the model's kind
    # What a text model's head reads (`model.pooling` resolved: cls, mean or pooler); None for images.
    pooling: str | None = None
    # The most tokens a text model takes (its position embeddings, its tokenizer's limit); None: images,
    # or no limit known.
    max_tokens: int | None = None


@dataclass(frozen=True)
class Fingerprint:
    """What a source adds to a feature cache's key (tlsearch.train.features): the features change
    when any of it does."""

    config: str  # sha256 of the model's configuration
    preprocessing: dict[str, Any]  # readable, kept in the cache's manifest (digests where large)
    libraries: tuple[str, ...]  # the libraries whose code computes the features (their versions count)


class ModelSource(Protocol):
    """A model library tlsearch loads classifiers from, registered in SOURCES under `name`."""

    name: str  # as in the spec's `model.source` (tlsearch.spec.vocab.MODEL_SOURCES)

    def load(self, spec: ModelSpec, num_classes: int, weights: bool) -> LoadedModel:
        """The classifier with a new head of `num_classes` outputs and its preprocessing; weights=False
        builds it on the meta device (configs read, no weights)."""
        ...

    def layer_map(self, model: nn.Module, head_modules: tuple[str, ...]) -> LayerMap:
        """The backbone's depth numbering (tlsearch.models.layers) that strategies freeze and decay by."""
        ...

    def tail(self, loaded: LoadedModel, boundary: str) -> Tail:
        """The model above `boundary` (tlsearch.models.tails), sharing its modules; raises
        TailUnsupported where this model cannot be cut there."""
        ...

    def fingerprint(self, loaded: LoadedModel, spec: ModelSpec) -> Fingerprint:
        """The model's configuration and preprocessing as the feature cache's key covers them."""
        ...

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Feed a batch on the device (a dict of tensors or a tensor) to the model, or to one of its
        tails, and return its logits."""
        ...


SOURCES: Registry[ModelSource] = Registry("model source")


def register(source: ModelSource) -> ModelSource:
    """Add `source` to SOURCES under its own name (a name taken twice raises)."""
    return SOURCES.register(source.name)(source)


def sha256_json(value: Any) -> str:
    """A stable digest of JSON-able data (keys sorted; anything else by its str)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def maybe_meta(weights: bool) -> Iterator[None]:
    """Build on the meta device unless weights are wanted: checking a search allocates nothing."""
    if weights:
        yield
    else:
        with torch.device("meta"):
            yield
