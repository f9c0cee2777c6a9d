"""A reused trial process starts each trial from the same state a new process would."""

from __future__ import annotations

from pathlib import Path

import torch

from tlsearch.models.sources import build_model
from tlsearch.spec.model import ModelSpec
from tlsearch.train import process_cache
from tlsearch.train.loop import seed_everything


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_cached_model_equals_a_fresh_build_and_leaves_the_same_random_state(tiny_bert: Path) -> None:
    spec = ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", max_length=16)
    process_cache.clear()
    seed_everything(7)
    fresh = build_model(spec, 3)
    after_fresh = torch.rand(4)  # what the trial draws next (dropout, shuffling)

    for _ in range(2):  # first use builds and keeps a copy; the second comes from the copy
        seed_everything(7)
        cached = process_cache.fresh_model(spec, 3, seed=7)
        assert torch.equal(torch.rand(4), after_fresh)
        for key, value in _state(fresh.model).items():
            assert torch.equal(cached.model.state_dict()[key], value), key
        # Trials train their model in place: the next trial must not see it.
        with torch.no_grad():
            for p in cached.model.parameters():
                p.add_(1.0)


def test_keys_separate_models_seeds_and_class_counts(tiny_bert: Path) -> None:
    spec = ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", max_length=16)
    process_cache.clear()
    seed_everything(1)
    a = process_cache.fresh_model(spec, 3, seed=1)
    seed_everything(2)
    b = process_cache.fresh_model(spec, 3, seed=2)
    seed_everything(1)
    c = process_cache.fresh_model(spec, 4, seed=1)
    head = a.head_modules[0]
    assert not torch.equal(a.model.get_submodule(head).weight, b.model.get_submodule(head).weight)
    assert c.model.get_submodule(head).weight.shape[0] == 4
    assert len(process_cache._models) == 2  # bounded: the oldest went


def test_datasets_are_built_once_per_key() -> None:
    process_cache.clear()
    built: list[int] = []
    for _ in range(3):
        process_cache.datasets(("k",), lambda: built.append(1) or ("train", "validation"))
    assert built == [1]
