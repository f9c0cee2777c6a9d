"""What a reused trial process keeps between trials.

With Tune's `reuse_actors`, consecutive single-worker trials of a search run in one Ray actor process,
so imports are paid once. This module keeps, in that process, the two things every trial of a search
rebuilds identically: the pretrained model as loaded from disk (trials get a deep copy, since
strategies freeze, wrap and train it) and the tokenized / decoded data sets (read-only). A key holds
everything the object depends on; a small bound keeps memory flat when trials differ.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from tlsearch.data.tables import DataFiles
from tlsearch.models.sources import LoadedModel, build_model
from tlsearch.spec.model import ModelSpec

_KEEP = 2  # per kind: one search at a time, and one more while a process switches searches
_models: OrderedDict[tuple[Any, ...], tuple[LoadedModel, torch.Tensor]] = OrderedDict()
_datasets: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def _remember(store: OrderedDict, key: tuple[Any, ...], value: Any) -> Any:
    store[key] = value
    store.move_to_end(key)
    while len(store) > _KEEP:
        store.popitem(last=False)
    return value


def fresh_model(spec: ModelSpec, num_classes: int, seed: int) -> LoadedModel:
    """A model exactly as `build_model` returns it right after `seed_everything(seed)`, including the
    random state it leaves behind (the new head's initialisation draws from it), so a reused process
    trains bit for bit like a new one."""
    key = (spec.model_dump_json(), num_classes, seed)
    if key in _models:
        template, rng_state = _models[key]
        _models.move_to_end(key)
        torch.set_rng_state(rng_state)
        return dataclasses.replace(template, model=copy.deepcopy(template.model))
    loaded = build_model(spec, num_classes)
    # Keep an untouched copy for later trials; this trial trains the original.
    untouched = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    _remember(_models, key, (untouched, torch.get_rng_state()))
    return loaded


def dataset_key(data: DataFiles, model: ModelSpec) -> tuple[Any, ...]:
    """What a trial's data sets depend on: the files and how they are read, and the model's
    preprocessing (tokenizer and max_length, or image size)."""
    return (data, model.model_dump_json())


def datasets(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The data sets kept under `key`, else `build()`'s, kept from now on."""
    if key in _datasets:
        _datasets.move_to_end(key)
        return _datasets[key]
    return _remember(_datasets, key, build())


def clear() -> None:
    _models.clear()
    _datasets.clear()
